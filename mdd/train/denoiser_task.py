"""Masked-diffusion training of the text-conditioned denoiser, as a `Task` of the shared loop.

Sections: the model bundle (`DenoiserSystem`: denoiser + text encoder + neighbour table +
masking/loss options, built from the config in `system_from_config`), the loss, the Task (state,
step, batches, evaluation), the sampler's `logits_fn`, and `run(config, workdir)` for
`--config.mode=train`.

Precision: the modules compute in `denoiser.dtype` (bf16) with fp32 master weights, the loss
keeps its log-sum-exp in fp32. Classifier-free guidance: each example's text is replaced by the
denoiser's learned null embedding with probability `denoiser_train.cfg_drop_prob`.

Batches (host numpy) carry `tokens` int32 [B, h, w] and `text_ids` int32 [B, T] + `text_len`
[B] (`mdd.data.text` byte ids). For a frozen text encoder (minilm, t5) the batch iterator adds
`text_emb` [B, T, Dt] + `text_mask` [B, T] on the host (cached per prompt); the byte encoder
runs inside the step. Image batches (`image` uint8) are tokenised on the fly when the Task is
given an `encode_fn` (a frozen image tokenizer).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdd import losses
from mdd import masking as masking_lib
from mdd.data import text as text_lib
from mdd.models import denoiser as denoiser_lib
from mdd.models import text_encoders
from mdd.train import state as state_lib

# --------------------------------------------------------------------------------------------
# The model bundle.


@dataclasses.dataclass(frozen=True, eq=False)
class DenoiserSystem:
  """Everything the step, the evaluation and the sampler share. Built by `system_from_config`."""
  denoiser: denoiser_lib.Denoiser
  text_encoder: Any  # TrainableTextEncoder (byte/word, in the step) or FrozenTextEncoder (host)
  neighbours: jax.Array | None  # [V, K] int32 GCE table (None for loss_type="ce" only)
  neighbour_weights: jax.Array | None
  masking: masking_lib.MaskingConfig
  loss_type: str = "gce"
  loss_mode: str = "soft"
  ce_mix: float = 0.0
  loss_impl: str = "auto"
  loss_chunk_size: int = 0
  metrics_chunk: int = 1024
  cfg_drop_prob: float = 0.1
  text_max_len: int = 64

  @property
  def vocab_size(self) -> int:
    return self.denoiser.vocab_size

  @property
  def trainable_text(self) -> bool:
    return isinstance(self.text_encoder, nn.Module)

  @property
  def text_dim(self) -> int:
    return self.text_encoder.width if self.trainable_text else self.text_encoder.dim

  def init_params(self, rng: jax.Array) -> dict:
    """{"denoiser": ..., ["text": ...]} (boxed with logical axis names)."""
    d_rng, t_rng = jax.random.split(rng)
    params = {"denoiser": denoiser_lib.init_params(self.denoiser, d_rng, text_dim=self.text_dim)}
    if self.trainable_text:
      ids = jnp.zeros((1, self.text_max_len), jnp.int32)
      params["text"] = self.text_encoder.init(t_rng, ids, jnp.ones_like(ids, bool))["params"]
    return params

  def encode_text(self, params, batch) -> tuple[jax.Array, jax.Array]:
    """(text [B, T, Dt], mask [B, T] bool) from a (device) batch."""
    if self.trainable_text:
      ids = batch["text_ids"]
      mask = jnp.arange(ids.shape[1])[None, :] < batch["text_len"][:, None]
      return self.text_encoder.apply({"params": params["text"]}, ids, mask)
    if "text_emb" not in batch:
      raise ValueError("a frozen text encoder needs batches with 'text_emb' (use make_batches)")
    return batch["text_emb"], batch["text_mask"].astype(bool)

  def hidden(self, params, tokens, text, text_mask, mask_ratio, drop_text=None):
    return self.denoiser.apply({"params": params["denoiser"]}, tokens, text, text_mask,
                               mask_ratio, drop_text=drop_text, return_hidden=True)

  def head(self, params) -> jax.Array:
    return denoiser_lib.head_weights(params["denoiser"])

  def _loss_kwargs(self) -> dict:
    kwargs = dict(loss_type=self.loss_type, mode=self.loss_mode, ce_mix=self.ce_mix,
                  impl=self.loss_impl)
    if self.loss_chunk_size and self.loss_impl in ("chunked", "pallas", "auto"):
      kwargs["chunk_size"] = self.loss_chunk_size
    return kwargs

  def corrupt(self, params, tokens, rng, text, text_mask, drop_text):
    """Masks + edit-corrupts `tokens` (the draft edit source runs the model without grads)."""
    frozen = jax.lax.stop_gradient(params)
    draft_rng = jax.random.fold_in(rng, 1)

    def draft_fn(inputs, ratio):  # Called by `corrupt` only for edit_source="draft".
      h = self.hidden(frozen, inputs, text, text_mask, ratio, drop_text)
      return losses.chunked_argmax(h, self.head(frozen), chunk_size=self.metrics_chunk,
                                   rng=draft_rng)

    return masking_lib.corrupt(rng, tokens, self.denoiser.mask_id, self.masking,
                               neighbours=self.neighbours,
                               neighbour_weights=self.neighbour_weights, draft_fn=draft_fn)

  def loss(self, params, batch, rng, *, cfg_drop: bool = True, with_metrics: bool = False):
    """(scalar loss, aux dict) of one batch."""
    mask_rng, drop_rng = jax.random.split(rng)
    text, text_mask = self.encode_text(params, batch)
    tokens = batch["tokens"].astype(jnp.int32)
    batch_size = tokens.shape[0]
    if cfg_drop and self.cfg_drop_prob > 0:
      drop_text = jax.random.uniform(drop_rng, (batch_size,)) < self.cfg_drop_prob
    else:
      drop_text = jnp.zeros((batch_size,), bool)
    corrupted = self.corrupt(params, tokens, mask_rng, text, text_mask, drop_text)
    hidden = self.hidden(params, corrupted["inputs"], text, text_mask,
                         corrupted["mask_ratio"], drop_text)
    head = self.head(params)
    loss = losses.weighted_loss(hidden, head, corrupted["labels"], corrupted["weights"],
                                self.neighbours, self.neighbour_weights, **self._loss_kwargs())
    aux = {"mask_ratio": jnp.mean(corrupted["mask_ratio"]),
           "edited_fraction": jnp.mean(corrupted["edited"].astype(jnp.float32))}
    if with_metrics:
      aux["sums"] = losses.token_metric_sums(
          jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(head), corrupted["labels"],
          corrupted["inputs"], corrupted["masked"], corrupted["edited"],
          corrupted["visible_clean"], self.neighbours, chunk_size=self.metrics_chunk)
    return loss, aux

  # The sampler's model contract (mdd/sampler.py).
  def logits_fn(self, grid_shape: tuple[int, int]) -> Callable:
    """`logits_fn(context, tokens [R, h*w], info) -> logits [R, h*w, V]` for `mdd.sampler`.

    `context` comes from `sampling_context`; rows with `info.cond_mask` False get the null text.
    """
    height, width = grid_shape

    def logits_fn(context, tokens, info):
      text = info.per_row(context["text"])
      text_mask = info.per_row(context["text_mask"])
      rows = tokens.shape[0]
      hidden = self.hidden(context["params"], tokens.reshape(rows, height, width), text,
                           text_mask, info.mask_ratio, drop_text=~info.cond_mask)
      hidden = hidden.reshape(rows, height * width, -1)
      head = self.head(context["params"]).astype(hidden.dtype)
      return jnp.einsum("rld,vd->rlv", hidden, head, preferred_element_type=jnp.float32)

    return logits_fn

  def sampling_context(self, params, prompts: list[str]) -> dict:
    """The `context` of `logits_fn` for `prompts` (text encoded once, per sample)."""
    batch = self.host_text_batch(prompts)
    text, text_mask = self.encode_text(params, jax.tree.map(jnp.asarray, batch))
    return {"params": params, "text": text, "text_mask": text_mask}

  def host_text_batch(self, prompts: list[str]) -> dict[str, np.ndarray]:
    """Text inputs of a batch for `prompts` (byte ids, or frozen embeddings)."""
    tokenizer = text_lib.ByteTokenizer(max_len=self.text_max_len)
    batch = tokenizer.encode_batch(prompts)
    batch = {"text_ids": batch["text_ids"], "text_len": batch["text_len"]}
    if not self.trainable_text:
      batch["text_emb"], batch["text_mask"] = self.text_encoder.encode(prompts)
    return batch

  def add_frozen_text(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds `text_emb`/`text_mask` to a host batch when the text encoder is frozen."""
    if self.trainable_text or "text_emb" in batch:
      return batch
    if "caption" in batch:
      prompts = [str(c) for c in np.asarray(batch["caption"]).tolist()]
    else:
      tokenizer = text_lib.ByteTokenizer(max_len=self.text_max_len)
      prompts = [tokenizer.decode(row) for row in np.asarray(batch["text_ids"])]
    batch = dict(batch)
    batch["text_emb"], batch["text_mask"] = self.text_encoder.encode(prompts)
    return batch


_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}


def _dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f"dtype {name!r}: choose one of {sorted(_DTYPES)}")
  return _DTYPES[name]


def system_from_config(config, *, vocab_size: int | None = None, neighbours=None,
                       neighbour_weights=None, text_encoder=None) -> DenoiserSystem:
  """The one place the config's denoiser/text/masking/loss/denoiser_train sections are read.

  `vocab_size` overrides `denoiser.vocab_size` (the tokenizer decides it); the neighbour table
  [V, K] is required for `loss.type="gce"` and for neighbour edits.
  """
  dcfg, lcfg = config.denoiser, config.loss
  vocab = int(vocab_size or dcfg.vocab_size)
  if vocab <= 0:
    raise ValueError("denoiser.vocab_size is 0 and no vocab_size was given (the tokenizer's "
                     "codebook size)")
  if neighbours is not None:
    neighbours = jnp.asarray(neighbours, jnp.int32)
    neighbour_weights = jnp.asarray(neighbour_weights, jnp.float32)
    if neighbours.shape[0] != vocab or neighbour_weights.shape != neighbours.shape:
      raise ValueError(f"neighbour table {neighbours.shape} / weights "
                       f"{neighbour_weights.shape} do not match vocab_size={vocab}")
    k = int(lcfg.get("num_neighbours", 0))
    if k:
      neighbours, neighbour_weights = neighbours[:, :k], neighbour_weights[:, :k]
  masking_cfg = masking_lib.MaskingConfig.from_config(config.masking)
  needs_table = lcfg.type == "gce" or (masking_cfg.edit_fraction > 0
                                       and masking_cfg.edit_source == "neighbour"
                                       and masking_cfg.edit_uniform_share < 1)
  if needs_table and neighbours is None:
    raise ValueError("loss.type='gce' and neighbour edits need the tokenizer's neighbour table")
  if neighbours is None:  # Neighbour edits with a uniform share of 1 never read the table.
    neighbours, neighbour_weights = losses.identity_table(vocab)
  model = denoiser_lib.Denoiser.from_variant(
      dcfg.variant, vocab, dtype=_dtype(dcfg.dtype), param_dtype=_dtype(dcfg.param_dtype),
      qk_norm=bool(dcfg.qk_norm), remat=bool(dcfg.remat),
      scan_layers=bool(dcfg.get("scan_layers", False)),
      attention_impl=dcfg.get("attention_impl", "") or None,
      patch_size=int(dcfg.get("patch_size", 1)),
      **{k: int(dcfg.get(k, 0)) for k in ("width", "depth", "num_heads", "mlp_dim")})
  if text_encoder is None:
    text_encoder = text_encoders.text_encoder_from_config(config.text)
  if isinstance(text_encoder, text_encoders.TrainableTextEncoder):
    text_encoder = text_encoder.clone(dtype=_dtype(dcfg.dtype),
                                      param_dtype=_dtype(dcfg.param_dtype))
  return DenoiserSystem(
      denoiser=model, text_encoder=text_encoder, neighbours=neighbours,
      neighbour_weights=neighbour_weights, masking=masking_cfg, loss_type=lcfg.type,
      loss_mode=lcfg.mode, ce_mix=float(lcfg.ce_mix), loss_impl=lcfg.impl,
      loss_chunk_size=int(lcfg.get("chunk_size", 0)),
      metrics_chunk=int(lcfg.get("metrics_chunk", 1024)),
      cfg_drop_prob=float(config.denoiser_train.cfg_drop_prob),
      text_max_len=int(config.text.max_len))


# --------------------------------------------------------------------------------------------
# The Task.


def _optim_config(train_cfg) -> ml_collections.ConfigDict:
  optim = ml_collections.ConfigDict(train_cfg.optim.to_dict())
  optim.num_steps = int(train_cfg.num_steps)
  return optim


def make_train_step(system: DenoiserSystem):
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


def make_evaluate(system: DenoiserSystem, eval_batches: list[dict[str, np.ndarray]],
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


def make_task(config, system: DenoiserSystem,
              make_batches: Callable[[int], Iterator[dict[str, np.ndarray]]], *,
              eval_batches: list[dict[str, np.ndarray]] | None = None,
              encode_fn: Callable[[np.ndarray], np.ndarray] | None = None):
  """The loop `Task` ("denoiser").

  `make_batches(start_step)` yields host batches with `tokens` (or `image` when `encode_fn`
  maps uint8 images [B, H, W, 3] to token ids [B, h, w]) and `text_ids`/`text_len`.
  """
  from mdd.train import loop  # pylint: disable=import-outside-toplevel

  train_cfg = config.denoiser_train
  tx = state_lib.make_optimizer(_optim_config(train_cfg))
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
    for batch in make_batches(start_step):
      yield prepare(batch)

  eval_prepared = [prepare(b) for b in (eval_batches or [])]
  return loop.Task(name="denoiser", init_state=init_state, train_step=make_train_step(system),
                   make_batches=batches, num_steps=int(train_cfg.num_steps),
                   evaluate=make_evaluate(system, eval_prepared))


# --------------------------------------------------------------------------------------------
# --config.mode=train


def run(config, workdir: str):
  """Trains the denoiser with DIR/tokenizer's neighbour table.

  `denoiser_train.source="tokens"` (default, fast) reads the shards under DIR/tokens
  (`mdd.pretokenize.TokenShardSource`); `"images"` reads the data source and encodes images on
  the fly with the frozen tokenizer of DIR/tokenizer. With `denoiser_train.summary_every > 0`
  the loop also samples a few fixed prompts and writes them (TensorBoard when present, and
  `DIR/denoiser/samples/step_<N>.png`).
  """
  from mdd import neighbours as neighbours_lib  # pylint: disable=import-outside-toplevel
  from mdd import sharding  # pylint: disable=import-outside-toplevel
  from mdd.train import loop  # pylint: disable=import-outside-toplevel

  train_cfg = config.denoiser_train
  table = neighbours_lib.load_table(os.path.join(workdir, "tokenizer", "neighbours.npz"))
  system = system_from_config(config, vocab_size=table.vocab_size, neighbours=table.neighbours,
                              neighbour_weights=table.weights)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config)
  batch_size = int(train_cfg.batch_size)
  seed = int(config.get("seed", 0))
  source_kind = train_cfg.get("source", "tokens")
  needs_tokenizer = source_kind == "images" or int(train_cfg.get("summary_every", 0)) > 0
  tokenizer = _frozen_tokenizer(workdir) if needs_tokenizer else None
  if source_kind == "tokens":
    make_batches, eval_batches = _token_batches(workdir, batch_size, seed,
                                                int(train_cfg.get("eval_batches", 4)))
    encode_fn = None
  elif source_kind == "images":
    make_batches, eval_batches = _image_batches(config, batch_size, seed,
                                                int(train_cfg.get("eval_batches", 4)))
    encode_fn = tokenizer.encode
  else:
    raise ValueError(f"denoiser_train.source={source_kind!r}: must be 'tokens' or 'images'")
  task = make_task(config, system, make_batches, eval_batches=eval_batches, encode_fn=encode_fn)
  if int(train_cfg.get("summary_every", 0)) > 0:
    task.image_summaries = _sample_summaries(config, system, tokenizer,
                                             os.path.join(workdir, "denoiser", "samples"))
  num_params = denoiser_lib.count_params(jax.eval_shape(system.init_params, jax.random.key(0)))
  logging.info("denoiser %s: %.2fM params (with the byte text encoder if trained)",
               config.denoiser.variant, num_params / 1e6)
  loop.train(task, train_cfg, workdir, mesh, rules, seed=seed)
  # Nothing is returned: absl's app.run would print a returned object as the exit status.


@dataclasses.dataclass(frozen=True)
class _FrozenTokenizer:
  """The trained tokenizer of a workdir as two jitted functions."""
  model: Any
  params: Any

  def encode(self, images) -> np.ndarray:
    from mdd import generation  # pylint: disable=import-outside-toplevel
    return np.asarray(generation.jit_method(self.model, "encode")(self.params,
                                                                   jnp.asarray(images)))

  def decode(self, tokens) -> np.ndarray:
    """uint8 images."""
    from mdd import generation  # pylint: disable=import-outside-toplevel
    return generation.to_uint8(generation.jit_method(self.model, "decode")(self.params,
                                                                           jnp.asarray(tokens)))


def _frozen_tokenizer(workdir: str) -> _FrozenTokenizer:
  from mdd.models import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  model, params, _ = tokenizer_lib.load_tokenizer(workdir)
  return _FrozenTokenizer(model, params)


def _token_batches(workdir: str, batch_size: int, seed: int, num_eval: int):
  from mdd import pretokenize  # pylint: disable=import-outside-toplevel
  tokens_dir = os.path.join(workdir, "tokens")
  source = pretokenize.TokenShardSource(tokens_dir, split="train")
  make_batches = lambda start_step: source.batches(batch_size, start_step, seed=seed)  # noqa: E731
  heldout = pretokenize.TokenShardSource(tokens_dir, split="validation")
  eval_iter = heldout.batches(batch_size, 0, seed=seed, shuffle=False)
  return make_batches, [next(eval_iter) for _ in range(num_eval)]


def _image_batches(config, batch_size: int, seed: int, num_eval: int):
  from mdd.data import pipeline as data_pipeline  # pylint: disable=import-outside-toplevel
  processes = jax.process_count()
  if batch_size % processes:
    raise ValueError(f"denoiser_train.batch_size={batch_size} is not a multiple of the "
                     f"{processes} processes")
  kwargs = dict(batch_size=batch_size // processes, seed=seed,
                process_index=jax.process_index(), process_count=processes)
  train = data_pipeline.make_source(config.data, "train")
  make_batches = lambda start_step: data_pipeline.batch_iterator(  # noqa: E731
      train, start_step=start_step, **kwargs)
  validation = data_pipeline.make_source(config.data, "validation")
  eval_iter = data_pipeline.batch_iterator(validation, shuffle=False, **kwargs)
  return make_batches, [next(eval_iter) for _ in range(num_eval)]


def _sample_summaries(config, system: DenoiserSystem, tokenizer: _FrozenTokenizer,
                      out_dir: str):
  """`image_summaries(state, batch)`: samples fixed prompts with the current EMA weights."""
  from mdd import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
  from mdd import visualize  # pylint: disable=import-outside-toplevel
  from mdd.eval import shapes_geneval  # pylint: disable=import-outside-toplevel
  prompts = [m["prompt"] for m in shapes_geneval.load_prompts("main")][::63][:8]
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
      os.makedirs(out_dir, exist_ok=True)
      visualize.save_image_grid(os.path.join(out_dir, f"step_{int(state.step):06d}.png"),
                                images, columns=4)
    return {"samples": images}

  return image_summaries


def make_logits_fn(system: DenoiserSystem, params, prompts: list[str],
                   grid_shape: tuple[int, int]):
  """(logits_fn, context) for `mdd.sampler.sample(logits_fn, rng, tokens, cfg, context=...)`."""
  return system.logits_fn(tuple(grid_shape)), system.sampling_context(params, list(prompts))
