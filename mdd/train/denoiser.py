"""Masked-diffusion training of the text-conditioned denoiser, as a `Task` of the shared loop.

The model, the loss and the sampler's model function live in `mdd.models.system`
(`DenoiserSystem`); this file builds the loop's `Task` from it (state, step, batches, held-out
evaluation) and runs `--config.mode=train`. Batches come from the token shards of the
pretokenize stage, or from the data source with images encoded on the fly by the frozen
tokenizer (`denoiser_train.source="images"`).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdd import sampling as sampler_lib
from mdd import workdir as workdir_lib
from mdd.data import loader
from mdd.data import prompts as prompts_lib
from mdd.data import token_shards
from mdd.models import denoiser as denoiser_lib
from mdd.models import system as system_lib
from mdd.objectives import losses
from mdd.sampling import visualize
from mdd.train import loop
from mdd.train import state as state_lib
from mdd.utils import sharding

# --------------------------------------------------------------------------------------------
# The Task.


def optim_config(train_cfg) -> ml_collections.ConfigDict:
  optim = ml_collections.ConfigDict(train_cfg.optim.to_dict())
  optim.num_steps = int(train_cfg.num_steps)
  return optim


def make_train_step(system: system_lib.DenoiserSystem):
  """(state, batch, rng) -> (state, metrics), pure and jittable."""

  def train_step(state, batch, rng):
    def loss_fn(params):
      return system.loss(params, batch, rng)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                             for g in jax.tree.leaves(nn.unbox(grads))))
    state = state.apply_gradients(grads)
    return state, {"loss": loss, "grad_norm": grad_norm, **aux}

  return train_step


def make_evaluate(system: system_lib.DenoiserSystem, eval_batches: list[dict[str, np.ndarray]],
                  seed: int = 1234):
  """state -> {loss, masked_acc, group_acc, edit_detect, edit_correct, keep_acc} over fixed
  held-out batches with fixed masks (the EMA params when there are some)."""

  @jax.jit
  def eval_one(params, batch, rng):
    loss, aux = system.loss(params, batch, rng, cfg_drop=False, with_metrics=True)
    return loss, aux["sums"]

  def evaluate(state):
    if not eval_batches:
      return {}
    params = state.eval_params
    totals, loss_sum = {}, 0.0
    for i, host in enumerate(eval_batches):
      batch = {k: jnp.asarray(v) for k, v in host.items()
               if np.asarray(v).dtype.kind not in ("U", "S", "O")}
      loss, sums = eval_one(params, batch, jax.random.fold_in(jax.random.key(seed), i))
      loss_sum += float(loss)
      for k, v in sums.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    out = {"loss": loss_sum / len(eval_batches)}
    out.update({k: float(v) for k, v in losses.summarise(totals).items()})
    out["num_eval_tokens"] = float(totals.get("masked_acc/count", 0.0))
    return out

  return evaluate


def make_task(config, system: system_lib.DenoiserSystem,
              make_batches: Callable[[int], Iterator[dict[str, np.ndarray]]], *,
              eval_batches: list[dict[str, np.ndarray]] | None = None,
              encode_fn: Callable[[np.ndarray], np.ndarray] | None = None):
  """The loop `Task` ("denoiser").

  `make_batches(start_step)` yields host batches with `tokens` (or `image` when `encode_fn`
  maps uint8 images [B, H, W, 3] to token ids [B, h, w]) and `text_ids`/`text_len`.
  """
  train_cfg = config.denoiser_train
  tx = state_lib.make_optimizer(optim_config(train_cfg))
  ema_decay = float(train_cfg.get("ema_decay", 0.0))

  def prepare(batch):
    if "tokens" not in batch:
      if encode_fn is None or "image" not in batch:
        raise ValueError("batches need 'tokens' (pretokenized) or 'image' with an encode_fn")
      batch = dict(batch)
      batch["tokens"] = np.asarray(encode_fn(batch.pop("image")), np.int32)
    return system.add_frozen_text(batch)

  def init_state(rng):
    return state_lib.TrainState.create(system.init_params(rng), tx, ema_decay=ema_decay)

  def batches(start_step):
    return loader.MappedIterator(make_batches(start_step), prepare)

  eval_prepared = [prepare(b) for b in (eval_batches or [])]
  return loop.Task(name="denoiser", init_state=init_state, train_step=make_train_step(system),
                   make_batches=batches, num_steps=int(train_cfg.num_steps),
                   evaluate=make_evaluate(system, eval_prepared))


# --------------------------------------------------------------------------------------------
# --config.mode=train


def run(config, workdir: str):
  """Trains the denoiser with DIR/tokenizer's neighbour table.

  `denoiser_train.source="tokens"` (default, fast) reads the shards under DIR/tokens;
  `"images"` reads the data source and encodes images on the fly with the frozen tokenizer of
  DIR/tokenizer. With `denoiser_train.summary_every > 0` the loop also samples a few fixed
  prompts and writes them (TensorBoard when present, and `DIR/denoiser/samples/step_<N>.png`).
  With `denoiser_train.init_from=SRC` a run without a checkpoint of its own starts from SRC's
  weights (`_warm_start`); one with a checkpoint resumes it.
  """
  run_dir = workdir_lib.Workdir(workdir)
  train_cfg = config.denoiser_train
  system = run_dir.denoiser_system(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config)
  batch_size = int(train_cfg.batch_size)
  seed = int(config.get("seed", 0))
  num_eval = int(train_cfg.get("eval_batches", 4))
  source_kind = train_cfg.get("source", "tokens")
  needs_tokenizer = source_kind == "images" or int(train_cfg.get("summary_every", 0)) > 0
  tokenizer = run_dir.load_tokenizer() if needs_tokenizer else None
  if source_kind == "tokens":
    make_batches, eval_batches = _token_batches(run_dir, batch_size, seed, num_eval)
    encode_fn = None
  elif source_kind == "images":
    make_batches, eval_batches = _image_batches(config, batch_size, seed, num_eval)
    encode_fn = tokenizer.encode
  else:
    raise ValueError(f"denoiser_train.source={source_kind!r}: must be 'tokens' or 'images'")
  task = make_task(config, system, make_batches, eval_batches=eval_batches, encode_fn=encode_fn)
  init_from = str(train_cfg.get("init_from", "") or "")
  if init_from:  # Used only while this run has no checkpoint of its own (the loop decides).
    task.warm_start = _warm_start(run_dir, workdir_lib.Workdir(init_from))
  if int(train_cfg.get("summary_every", 0)) > 0:
    task.image_summaries = _sample_summaries(config, system, tokenizer,
                                             os.path.join(run_dir.denoiser_dir, "samples"))
  num_params = denoiser_lib.count_params(jax.eval_shape(system.init_params, jax.random.key(0)))
  logging.info("denoiser %s: %.2fM params (with the byte text encoder if trained)",
               config.denoiser.variant, num_params / 1e6)
  loop.train(task, train_cfg, workdir, mesh, rules, seed=seed)
  # Nothing is returned: absl's app.run would print a returned object as the exit status.


def _warm_start(run_dir: workdir_lib.Workdir, source: workdir_lib.Workdir):
  """`Task.warm_start` for `denoiser_train.init_from`: the source run's latest parameters (its
  EMA copy when it kept one), denoiser and trainable text encoder alike, read straight into this
  run's shardings; step 0, the fresh optimizer state, the EMA restarted from them. The weights
  only mean something with the tokenizer they were trained on, so this run's must be the
  source's (the train_tokenizer stage copies it)."""

  def warm_start(state):
    problem = source.source_problem()
    if problem:
      raise ValueError(f"denoiser_train.init_from: {problem}")
    mine, theirs = run_dir.load_neighbours(), source.load_neighbours()
    if not (np.array_equal(mine.neighbours, theirs.neighbours)
            and np.array_equal(mine.weights, theirs.weights)):
      raise ValueError(f"denoiser_train.init_from: the tokenizer of {run_dir.root} is not the "
                       f"one of {source.root} (their neighbour tables differ), and the weights "
                       "only fit the tokenizer they were trained with; start in a fresh workdir, "
                       "where the train_tokenizer stage copies the source's tokenizer")
    params, key, step = source.load_denoiser_init(state.params)
    ema = None
    if state.ema_params is not None:
      shardings = jax.tree.map(lambda a: a.sharding, params)
      ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)
    logging.info("denoiser: initialised from %s (%s of step %d), optimizer state fresh",
                 source.root, key, step)
    return state.replace(params=params, ema_params=ema)

  return warm_start


def _token_batches(run_dir: workdir_lib.Workdir, batch_size: int, seed: int, num_eval: int):
  source = token_shards.TokenShardSource(run_dir.tokens_dir("train"))
  make_batches = lambda start_step: source.batches(batch_size, start_step, seed=seed)  # noqa: E731
  heldout = token_shards.TokenShardSource(run_dir.tokens_dir("validation"))
  eval_iter = heldout.batches(batch_size, 0, seed=seed, shuffle=False)
  return make_batches, [next(eval_iter) for _ in range(num_eval)]


def _image_batches(config, batch_size: int, seed: int, num_eval: int):
  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(f"denoiser_train.batch_size={batch_size} is not a multiple of the "
                     f"{processes} processes")
  kwargs = dict(batch_size=batch_size // processes, seed=seed,
                process_index=jax.process_index(), process_count=processes)
  train = loader.make_source(config.data, "train")
  make_batches = lambda start_step: loader.batch_iterator(  # noqa: E731
      train, start_step=start_step, **kwargs)
  validation = loader.make_source(config.data, "validation")
  eval_iter = loader.batch_iterator(validation, shuffle=False, **kwargs)
  return make_batches, [next(eval_iter) for _ in range(num_eval)]


def _sample_summaries(config, system: system_lib.DenoiserSystem,
                      tokenizer: workdir_lib.TrainedTokenizer, out_dir: str):
  """`image_summaries(state, batch)`: samples fixed prompts with the current EMA weights."""
  prompts = [m["prompt"] for m in prompts_lib.load_prompts("main")][::63][:8]
  sampler_cfg = sampler_lib.SamplerConfig.from_config(config.sampler,
                                                      mask_id=system.denoiser.mask_id)
  logits_fns = {}

  def image_summaries(state, batch):
    grid = tuple(batch["tokens"].shape[1:])
    if grid not in logits_fns:
      logits_fns[grid] = system.logits_fn(grid)
    params = jax.device_get(nn.unbox(state.eval_params))
    context = system.sampling_context(params, prompts)
    tokens = jnp.full((len(prompts), *grid), system.denoiser.mask_id, jnp.int32)
    out = sampler_lib.sample(logits_fns[grid], jax.random.key(0), tokens, sampler_cfg,
                             context=context)
    images = tokenizer.decode(out.tokens)
    if jax.process_index() == 0:
      visualize.save_image_grid(os.path.join(out_dir, f"step_{int(state.step):06d}.png"),
                                images, columns=4)
    return {"samples": images}

  return image_summaries
