r"""Tokenizer training as a `Task` of the shared loop, plus export and loading of the result.

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=DIR --config.mode=train_tokenizer

`make_task(config)` builds the loop's `Task`: the state (generator `TrainState` with optional
EMA, an optional discriminator `TrainState` with its own optimizer, and the per-code usage EMA
that drives dead-code restarts), one jittable train step, resumable ShapeGen/dataset batches,
the final evaluation (PSNR, SSIM, codebook usage on the held-out split) and input-vs-
reconstruction image summaries. `run(config, workdir)` trains through `mdd.train.loop.train`,
then `export_tokenizer` writes `DIR/tokenizer/tokenizer_config.json` and `neighbours.npz` next to
the loop's checkpoints (`mdd.workdir.Workdir.load_tokenizer` loads the result). A run started
from another (`denoiser_train.init_from`) copies that run's tokenizer instead.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import flax.linen as nn
import flax.struct as struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdd import workdir as workdir_lib
from mdd.data import loader
from mdd.data import sources
from mdd.eval import reconstruction
from mdd.models import discriminator as disc_lib
from mdd.models import quantizers
from mdd.models import tokenizer as tokenizer_lib
from mdd.objectives import neighbours as neighbours_lib
from mdd.objectives import tokenizer_losses
from mdd.train import loop as loop_lib
from mdd.train import state as state_lib
from mdd.utils import fileio
from mdd.utils import sharding as sharding_lib

TASK_NAME = workdir_lib.TOKENIZER


class TokenizerState(struct.PyTreeNode):
  """generator: encoder/quantizer/decoder params + optimizer (+ EMA); discriminator: the
  PatchGAN's own TrainState or None; code_usage: [V] EMA of per-step code counts (drives the
  restarts); code_last_used: [V] int32 last step at which each code was picked."""
  generator: state_lib.TrainState
  discriminator: Any
  code_usage: jax.Array
  code_last_used: jax.Array

  @property
  def step(self) -> jax.Array:
    return self.generator.step

  @property
  def eval_params(self):
    return self.generator.eval_params


# ---------------------------------------------------------------------------------------------
# Params surgery: the codebook row restart edits a (possibly boxed) leaf.


def _get_codebook(params) -> jax.Array:
  return nn.unbox(params["quant"]["codebook"])


def _set_codebook(params, new_codebook: jax.Array):
  quant = dict(params["quant"])
  old = quant["codebook"]
  quant["codebook"] = (old.replace_boxed(new_codebook) if isinstance(old, nn.meta.AxisMetadata)
                       else new_codebook)
  out = dict(params)
  out["quant"] = quant
  return out


# ---------------------------------------------------------------------------------------------
# Building blocks shared by training and loading.


def build_models(tok_cfg):
  """(tokenizer, discriminator or None) from the tokenizer config section."""
  model = tokenizer_lib.tokenizer_from_config(tok_cfg)
  disc = None
  if float(tok_cfg.gan.weight) > 0:
    disc = disc_lib.PatchDiscriminator(width=int(tok_cfg.gan.width),
                                       num_layers=int(tok_cfg.gan.num_layers))
  return model, disc


def make_init_state(model, disc, tok_cfg, height: int, width: int):
  """rng -> TokenizerState (pure, jittable; params stay boxed with logical names)."""
  gen_tx = state_lib.make_optimizer(tok_cfg.optimizer)
  disc_tx = None
  if disc is not None:
    gan = tok_cfg.gan
    disc_tx = state_lib.make_optimizer(ml_collections.ConfigDict(dict(
        lr=float(gan.lr), warmup_steps=0, num_steps=int(tok_cfg.num_steps), b1=float(gan.b1),
        b2=float(gan.b2), weight_decay=0.0, grad_clip=0.0, min_lr_ratio=1.0)))

  def init_state(rng):
    model_rng, disc_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, height, width, 3), jnp.uint8)
    params = model.init(model_rng, dummy)["params"]
    generator = state_lib.TrainState.create(params, gen_tx, float(tok_cfg.ema_decay))
    discriminator = None
    if disc is not None:
      disc_params = disc.init(disc_rng, jnp.zeros((1, height, width, 3), jnp.float32))["params"]
      discriminator = state_lib.TrainState.create(disc_params, disc_tx)
    return TokenizerState(generator=generator, discriminator=discriminator,
                          code_usage=jnp.zeros((model.num_codes,), jnp.float32),
                          code_last_used=jnp.full((model.num_codes,), -(2 ** 30), jnp.int32))

  return init_state


def make_train_step(model, disc, tok_cfg, perceptual=None):
  """(state, batch, rng) -> (state, metrics). batch["image"]: uint8 [B, H, W, 3]."""
  loss_cfg, gan_cfg, restart_cfg = tok_cfg.loss, tok_cfg.gan, tok_cfg.restart
  l1_weight, l2_weight = float(loss_cfg.l1_weight), float(loss_cfg.l2_weight)
  perceptual_weight = float(loss_cfg.perceptual_weight)
  gan_weight = float(gan_cfg.weight)
  num_steps = int(tok_cfg.num_steps)
  restart_every = int(restart_cfg.every)
  restart_stop = int(float(restart_cfg.stop_fraction) * num_steps)
  usage_decay = float(restart_cfg.usage_decay)
  # "Codebook usage" in the train metrics: share of codes picked within the EMA's horizon.
  usage_window = max(1, round(1.0 / max(1.0 - usage_decay, 1e-6)))
  is_vq = model.quantizer == "vq"
  vocab = model.num_codes

  def image_loss(reconstruction, target):
    loss = tokenizer_losses.reconstruction_losses(reconstruction, target, l1_weight,
                                                  l2_weight)["loss"]
    if perceptual is not None and perceptual_weight > 0:
      loss = loss + perceptual_weight * perceptual(reconstruction, target)
    return loss

  def train_step(state: TokenizerState, batch, rng):
    images = batch["image"]
    target = tokenizer_lib.images_to_float(images)
    generator = state.generator
    step = generator.step
    gan_active = step >= int(gan_cfg.start_step)

    def loss_fn(params):
      reconstruction, aux = model.apply({"params": params}, images)
      terms = tokenizer_losses.reconstruction_losses(reconstruction, target, l1_weight,
                                                     l2_weight)
      rec_loss = terms["loss"]
      metrics = {"l1": terms["l1"], "mse": terms["mse"], "quantizer_loss": aux["loss"]}
      if perceptual is not None and perceptual_weight > 0:
        metrics["perceptual"] = perceptual(reconstruction, target)
        rec_loss = rec_loss + perceptual_weight * metrics["perceptual"]
      total = rec_loss + aux["loss"]
      if disc is not None:
        disc_params = state.discriminator.params
        gen_loss_of = lambda x: disc_lib.hinge_generator_loss(
            disc.apply({"params": disc_params}, x))
        gen_loss = gen_loss_of(reconstruction)
        if bool(gan_cfg.adaptive_weight):
          last = nn.unbox(params)["decoder"]["conv_out"]
          weight = disc_lib.adaptive_weight(
              aux["decoder_features"], last["kernel"], last["bias"],
              lambda x: image_loss(x, target), gen_loss_of, float(gan_cfg.max_adaptive_weight))
        else:
          weight = jnp.ones((), jnp.float32)
        total = total + jnp.where(gan_active, gan_weight * weight, 0.0) * gen_loss
        metrics.update(generator_gan_loss=gen_loss, adaptive_weight=weight)
      metrics["rec_loss"] = rec_loss
      for key in ("codebook_loss", "commitment_loss", "entropy_loss"):
        if key in aux:
          metrics[key] = aux[key]
      return total, (reconstruction, aux, metrics)

    (loss, (reconstruction, aux, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(generator.params)
    new_generator = generator.apply_gradients(grads)

    new_discriminator = state.discriminator
    if disc is not None:
      fake = jax.lax.stop_gradient(reconstruction)

      def disc_loss_fn(disc_params):
        real_logits = disc.apply({"params": disc_params}, target)
        fake_logits = disc.apply({"params": disc_params}, fake)
        return disc_lib.hinge_discriminator_loss(real_logits, fake_logits), (
            jnp.mean(real_logits), jnp.mean(fake_logits))

      (disc_loss, (real_mean, fake_mean)), disc_grads = jax.value_and_grad(
          disc_loss_fn, has_aux=True)(state.discriminator.params)
      # Before start_step the discriminator is left untouched (not even weight decay/moments).
      new_discriminator = jax.lax.cond(
          gan_active, lambda: state.discriminator.apply_gradients(disc_grads),
          lambda: state.discriminator)
      metrics.update(disc_loss=disc_loss, disc_real_logit=real_mean, disc_fake_logit=fake_mean)

    ids = aux["ids"]
    counts = quantizers.code_usage_counts(ids, vocab)
    usage = usage_decay * state.code_usage + (1.0 - usage_decay) * counts
    threshold = float(restart_cfg.threshold) * ids.size / vocab
    if is_vq and restart_every > 0:
      encodings = jax.lax.stop_gradient(aux["encodings"].reshape(-1, model.code_dim))
      flat_ids = ids.reshape(-1)

      def restart(generator, usage):
        codebook = _get_codebook(generator.params)
        assigned = jnp.take(quantizers.l2_normalize(codebook), flat_ids, axis=0)
        distance = 1.0 - jnp.sum(encodings * assigned, axis=-1)
        new_codebook, new_usage, restarted = quantizers.restart_dead_codes(
            codebook, usage, encodings, rng, threshold, priority=distance)
        params = _set_codebook(generator.params, new_codebook)
        ema = generator.ema_params
        if ema is not None:  # Restarted rows are copied into the EMA too (no stale average).
          ema = _set_codebook(ema, jnp.where(restarted[:, None], new_codebook,
                                             _get_codebook(ema)))
        return generator.replace(params=params, ema_params=ema), new_usage, jnp.sum(restarted)

      def keep(generator, usage):
        return generator, usage, jnp.zeros((), jnp.int32)

      # lax.cond: the O(V) restart work is skipped on the steps between restarts.
      do_restart = (step % restart_every == 0) & (step < restart_stop)
      new_generator, usage, num_restarted = jax.lax.cond(do_restart, restart, keep,
                                                         new_generator, usage)
      metrics["restarted_codes"] = num_restarted.astype(jnp.float32)

    last_used = jnp.where(counts > 0, step, state.code_last_used)
    metrics.update(
        loss=loss, psnr=tokenizer_losses.psnr_from_mse(metrics["mse"]),
        perplexity=quantizers.perplexity(counts),
        batch_codebook_usage=jnp.mean(counts > 0),
        codebook_usage=jnp.mean(step - last_used < usage_window))
    new_state = TokenizerState(generator=new_generator, discriminator=new_discriminator,
                               code_usage=usage, code_last_used=last_used)
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return train_step


# ---------------------------------------------------------------------------------------------
# The task.


def _images_only(batch: dict) -> dict:
  """The tokenizer trains on images alone (a module-level function: grain workers pickle it)."""
  return {"image": batch["image"]}


def make_task(config) -> loop_lib.Task:
  """The loop `Task` for `config` (needs sections `tokenizer`, `data`, and `seed`)."""
  tok_cfg = config.tokenizer
  height, width = workdir_lib.image_hw(config.data)
  model, disc = build_models(tok_cfg)
  f = model.downsample_factor
  if height % f or width % f:
    raise ValueError(f"data resolution {height}x{width} is not divisible by the tokenizer's "
                     f"downsampling factor {f}")
  perceptual = None
  if float(tok_cfg.loss.perceptual_weight) > 0:
    perceptual = tokenizer_losses.PerceptualLoss(tok_cfg.loss.perceptual_weights)
  init_state = make_init_state(model, disc, tok_cfg, height, width)
  train_step = make_train_step(model, disc, tok_cfg, perceptual)

  process_count = jax.process_count()
  global_batch = int(tok_cfg.batch_size)
  if global_batch % process_count:
    raise ValueError(f"tokenizer.batch_size={global_batch} is not divisible by the "
                     f"{process_count} processes")

  def make_batches(start_step: int):
    return loader.batches_from_config(
        config.data, "train", batch_size=global_batch // process_count, seed=int(config.seed),
        start_step=start_step, process_index=jax.process_index(), process_count=process_count,
        transform=_images_only)

  roundtrip = reconstruction.make_roundtrip(model)
  eval_images = {}

  def evaluate(state: TokenizerState) -> dict[str, float]:
    if "images" not in eval_images:
      eval_images["images"] = reconstruction.shapes_images(
          config.data, tok_cfg.eval.split or sources.heldout_split(config.data),
          int(tok_cfg.eval.num_examples))
    results = reconstruction.evaluate_images(model, state.eval_params, eval_images["images"],
                                             int(tok_cfg.eval.batch_size), roundtrip)
    if bool(tok_cfg.eval.photos):
      results.update(reconstruction.photo_eval(model, state.eval_params))
    return results

  def image_summaries(state: TokenizerState, batch) -> dict[str, np.ndarray]:
    images = batch["image"]
    if isinstance(images, jax.Array):  # The loop hands global arrays: take this host's part.
      images = images.addressable_shards[0].data
    images = np.asarray(images)[:8]
    recon, _ = roundtrip(state.eval_params, images)
    recon = np.round(np.asarray(recon) * 255).astype(np.uint8)
    return {"input_vs_reconstruction": np.concatenate([images, recon], axis=2)}

  return loop_lib.Task(name=TASK_NAME, init_state=init_state, train_step=train_step,
                       make_batches=make_batches, num_steps=int(tok_cfg.num_steps),
                       evaluate=evaluate, image_summaries=image_summaries)


def train_and_export(config, workdir: str) -> TokenizerState:
  """Trains (or resumes) the tokenizer, then exports config + neighbours; returns the state."""
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config)
  divisor = sharding_lib.batch_size_divisor(mesh)
  if int(config.tokenizer.batch_size) % divisor:
    raise ValueError(f"tokenizer.batch_size={config.tokenizer.batch_size} must be a multiple of "
                     f"the {divisor} batch shards of the mesh")
  task = make_task(config)
  state = loop_lib.train(task, config.tokenizer.loop, workdir, mesh, rules,
                         seed=int(config.seed))
  export_tokenizer(state, config, workdir)
  return state


def run(config, workdir: str) -> None:
  """`--config.mode=train_tokenizer` (returns None: absl's app.run exits with the result).

  A run started from another (`denoiser_train.init_from`) that has no tokenizer of its own
  copies the source's instead of training one; a copied tokenizer is never trained further."""
  if copy_source_tokenizer(config, workdir):
    return
  train_and_export(config, workdir)


def copy_source_tokenizer(config, workdir: str) -> bool:
  """Whether this run's tokenizer is (now) a copy of another run's: copied here when
  `denoiser_train.init_from` names a run and this one has no tokenizer checkpoint yet."""
  run_dir = workdir_lib.Workdir(workdir)
  init_from = str((config.get("denoiser_train", None) or {}).get("init_from", "") or "")
  if run_dir.tokenizer_copied_from() is None and (
      not init_from or run_dir.checkpoint_steps(TASK_NAME)):
    return False
  record = None
  if sharding_lib.is_main_process():
    record = run_dir.copy_tokenizer_from(workdir_lib.Workdir(init_from))
  sharding_lib.sync_processes("tokenizer copied")
  record = record or run_dir.tokenizer_copied_from()
  logging.info("tokenizer: the one of %s (step %d), copied, not trained here",
               record["source"], record["step"])
  return True


# ---------------------------------------------------------------------------------------------
# Export and load.


def export_tokenizer(state: TokenizerState, config, workdir: str):
  """Writes DIR/tokenizer/tokenizer_config.json and neighbours.npz (process 0 only)."""
  if jax.process_index() != 0:
    return
  run_dir = workdir_lib.Workdir(workdir)
  fileio.makedirs(run_dir.tokenizer_dir)
  model, _ = build_models(config.tokenizer)
  codebook = None
  if model.quantizer == "vq":
    codebook = np.asarray(jax.device_get(jax.jit(
        lambda p: model.apply({"params": p}, method="codebook"))(state.eval_params)))
  table = neighbours_lib.table_from_config(config.tokenizer, codebook)
  neighbours_lib.save_table(run_dir.neighbours_file, table)
  fileio.write_json_atomic(run_dir.tokenizer_config_file,
                           json.loads(config.to_json_best_effort()))
  logging.info("tokenizer exported to %s (V=%d, K=%d)", run_dir.tokenizer_dir, table.vocab_size,
               table.k)
