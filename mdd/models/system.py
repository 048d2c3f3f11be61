"""The denoiser system: the Transformer, its text encoder, the GCE table and the loss options.

`DenoiserSystem` is what training, evaluation and sampling share: `loss` (masking and edit
corruption, the CE/GCE loss, token metrics), `logits_fn` (the sampler's model contract) and
`sampling_context` (text encoded once per prompt). `system_from_config` is the one place the
config's `denoiser`, `text`, `masking`, `loss` and `denoiser_train.cfg_drop_prob` are read.

Precision: the modules compute in `denoiser.dtype` (bf16) with fp32 master weights, the loss
keeps its log-sum-exp in fp32. Classifier-free guidance: each example's text is replaced by the
denoiser's learned null embedding with probability `cfg_drop_prob`.

Batches carry `tokens` int32 [B, h, w] and `text_ids` int32 [B, T] + `text_len` [B]
(`mdd.data.text` byte ids). For a frozen text encoder (minilm, t5) `add_frozen_text` adds
`text_emb` [B, T, Dt] + `text_mask` [B, T] on the host (cached per prompt); trainable encoders
run inside the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd.data import text as text_lib
from mdd.models import denoiser as denoiser_lib
from mdd.models import text as text_encoders
from mdd.objectives import losses
from mdd.objectives import masking as masking_lib


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

  # The sampler's model contract (mdd/sampling/sampler.py).
  def logits_fn(self, grid_shape: tuple[int, int]) -> Callable:
    """`logits_fn(context, tokens [R, h*w], info) -> logits [R, h*w, V]` for `mdd.sampling.sampler`.

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
  if lcfg.type not in losses.LOSSES:
    raise ValueError(f"loss.type={lcfg.type!r}: choose one of {sorted(losses.LOSSES)}")
  needs_table = losses.LOSSES[lcfg.type].needs_table or (masking_cfg.edit_fraction > 0
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
