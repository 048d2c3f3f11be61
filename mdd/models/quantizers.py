"""Quantizers of the image tokenizer: VQ with a large L2-normalised codebook, and FSQ.

`VectorQuantizer` projects encoder features to a low-dimensional space (factorised codes, as in
ViT-VQGAN / LlamaGen), L2-normalises them and picks the nearest code by cosine similarity. The
lookup scans the codebook in blocks with a running argmax, so a 2^18-code vocabulary never
builds a (tokens x V) matrix. Gradients reach the encoder through the straight-through
estimator; the codebook learns from the codebook loss, and `restart_dead_codes` (called by the
train step) re-seeds codes that the batches stopped using, which keeps usage high.

`FiniteScalarQuantizer` bounds each of a few channels and rounds it to one of `levels[i]`
values; the codebook is the implicit lattice of all level combinations, so it cannot collapse.

Both expose the same methods: `__call__(z) -> (features, aux)`, `encode(z) -> ids`,
`embed(ids) -> features`, `codebook() -> [V, d]` and the property `vocab_size`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd.models import gather

Array = jax.Array


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-6) -> Array:
  """x / max(|x|, eps) along `axis`, computed in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def blockwise_nearest(queries: Array, codebook: Array, block_size: int = 4096
                      ) -> tuple[Array, Array]:
  """Index of the code with the largest dot product for each query, scanning codebook blocks.

  Args:
    queries: [N, d]; L2-normalised when used for cosine similarity.
    codebook: [V, d] (same normalisation).
    block_size: codes per block; memory is O(N * block_size), never O(N * V).

  Returns:
    (ids [N] int32, best similarity [N] float32). Ties go to the lowest index, as `argmax`.
  """
  if queries.ndim != 2 or codebook.ndim != 2 or queries.shape[1] != codebook.shape[1]:
    raise ValueError(f"blockwise_nearest: need queries [N, d] and codebook [V, d], got "
                     f"{queries.shape} and {codebook.shape}")
  if block_size <= 0:
    raise ValueError(f"blockwise_nearest: block_size must be positive, got {block_size}")
  vocab, dim = codebook.shape
  block = min(block_size, vocab)
  num_blocks = -(-vocab // block)
  # Pad V up to whole blocks (padding is masked to -inf) instead of requiring divisibility.
  padded = jnp.pad(codebook.astype(jnp.float32), ((0, num_blocks * block - vocab), (0, 0)))
  blocks = padded.reshape(num_blocks, block, dim)
  offsets = jnp.arange(num_blocks, dtype=jnp.int32) * block
  queries = queries.astype(jnp.float32)

  def scan_block(carry, inputs):
    best_sim, best_id = carry
    code_block, offset = inputs
    sims = jnp.dot(queries, code_block.T, preferred_element_type=jnp.float32)
    in_range = offset + jnp.arange(block, dtype=jnp.int32) < vocab
    sims = jnp.where(in_range[None, :], sims, -jnp.inf)
    block_best = jnp.max(sims, axis=-1)
    block_arg = jnp.argmax(sims, axis=-1).astype(jnp.int32) + offset
    # Strictly greater keeps the earlier block on ties, matching a dense argmax.
    better = block_best > best_sim
    return (jnp.where(better, block_best, best_sim), jnp.where(better, block_arg, best_id)), None

  init = (jnp.full((queries.shape[0],), -jnp.inf, jnp.float32),
          jnp.zeros((queries.shape[0],), jnp.int32))
  (best_sim, best_id), _ = jax.lax.scan(scan_block, init, (blocks, offsets))
  return best_id, best_sim


def dense_nearest(queries: Array, codebook: Array) -> Array:
  """Reference for `blockwise_nearest`: argmax over the full (N x V) similarity matrix."""
  sims = jnp.dot(queries.astype(jnp.float32), codebook.astype(jnp.float32).T)
  return jnp.argmax(sims, axis=-1).astype(jnp.int32)


def code_usage_counts(ids: Array, vocab_size: int) -> Array:
  """How often each code occurs in `ids` ([V] float32); by sorting (no one-hot, no scatter)."""
  return gather.count_ids(ids, vocab_size)


def perplexity(counts: Array) -> Array:
  """exp(entropy) of the empirical code distribution given by `counts` [V]."""
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return jnp.exp(entropy)


def restart_dead_codes(codebook: Array, usage: Array, encodings: Array, rng: Array,
                       threshold: float, priority: Array | None = None, noise: float = 0.01
                       ) -> tuple[Array, Array, Array]:
  """Re-seeds codes whose usage EMA fell below `threshold` with random batch encodings.

  A code that no encoding picks gets no codebook gradient and stays dead forever; moving it onto
  a real encoding gives it a chance to be picked again (k-means style restart). With `priority`
  (e.g. each encoding's distance to its current code), encodings are drawn proportionally to it,
  so new codes land where the codebook serves the data worst instead of on the (frequent)
  encodings that already have a good code.

  Args:
    codebook: [V, d] raw (unnormalised) codebook parameter.
    usage: [V] exponential moving average of per-step code counts.
    encodings: [N, d] L2-normalised encoder outputs of the current batch (any N >= 1).
    rng: PRNG key.
    threshold: codes with `usage < threshold` are restarted.
    priority: optional [N] non-negative sampling weights of the encodings.
    noise: relative Gaussian jitter so that several restarts from one encoding differ.

  Returns:
    (new codebook [V, d], new usage [V], restarted mask [V] bool).
  """
  pick_rng, noise_rng = jax.random.split(rng)
  dead = usage < threshold
  num_codes, num_encodings = codebook.shape[0], encodings.shape[0]
  if priority is None:
    picks = jax.random.randint(pick_rng, (num_codes,), 0, num_encodings)
  else:
    # Inverse-CDF sampling: O(N + V log N), no [V, N] matrix even for V = 2^18.
    cdf = jnp.cumsum(jnp.maximum(priority.astype(jnp.float32), 0.0) + 1e-6)
    draws = jax.random.uniform(pick_rng, (num_codes,)) * cdf[-1]
    picks = jnp.clip(jnp.searchsorted(cdf, draws), 0, num_encodings - 1)
  fresh = encodings[picks].astype(jnp.float32)
  fresh = fresh + noise * jax.random.normal(noise_rng, fresh.shape, jnp.float32)
  # Keep the codebook's scale (only the direction matters for the lookup).
  scale = jnp.mean(jnp.linalg.norm(codebook.astype(jnp.float32), axis=-1))
  fresh = l2_normalize(fresh) * scale
  new_codebook = jnp.where(dead[:, None], fresh.astype(codebook.dtype), codebook)
  # Restarted codes get a grace period: their usage restarts at twice the threshold.
  new_usage = jnp.where(dead, 2.0 * threshold, usage)
  return new_codebook, new_usage, dead


def _dense(features: int, axes: tuple[str | None, str | None], name: str, dtype: Any) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class VectorQuantizer(nn.Module):
  """VQ with factorised, L2-normalised low-dimensional codes and a blockwise lookup.

  Attributes:
    vocab_size: number of codes V (up to 2^18 and beyond; the lookup is blockwise).
    code_dim: dimension d of the codes (8-32 is typical).
    out_features: width of the features handed to the decoder (up-projection of the code).
    commitment_cost: weight of |z - sg(q)|^2 (pulls encodings to their codes).
    codebook_cost: weight of |sg(z) - q|^2 (pulls codes to their encodings).
    lookup_block_size: codes per block in the nearest-code scan.
    entropy_weight: weight of the entropy regulariser (0 = off): per-token entropy of the soft
      assignment minus the entropy of the batch-averaged assignment (confident and diverse).
    entropy_temperature: temperature of that soft assignment over cosine similarities.
    entropy_max_tokens: the regulariser looks at most at this many (strided) tokens, because the
      soft assignment is a dense (tokens x V) matrix.
    dtype: compute dtype of the projections.
  """
  vocab_size: int
  code_dim: int
  out_features: int
  commitment_cost: float = 0.25
  codebook_cost: float = 1.0
  lookup_block_size: int = 4096
  entropy_weight: float = 0.0
  entropy_temperature: float = 0.01
  entropy_max_tokens: int = 1024
  dtype: Any = jnp.float32

  def setup(self):
    if self.vocab_size < 2 or self.code_dim < 1:
      raise ValueError(f"VectorQuantizer: need vocab_size >= 2 and code_dim >= 1, got "
                       f"{self.vocab_size}, {self.code_dim}")
    self.in_proj = _dense(self.code_dim, ("conv_in", None), "in_proj", self.dtype)
    self.out_proj = _dense(self.out_features, (None, "conv_out"), "out_proj", self.dtype)
    self.codebook_param = self.param(
        "codebook", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("codebook", None)),
        (self.vocab_size, self.code_dim), jnp.float32)

  def codebook(self) -> Array:
    """The L2-normalised codebook [V, d] (what the lookup and neighbour tables use)."""
    return l2_normalize(self.codebook_param)

  def project(self, z: Array) -> Array:
    """Encoder features [..., C] -> L2-normalised low-dimensional encodings [..., d]."""
    return l2_normalize(self.in_proj(z))

  def lookup(self, encodings: Array) -> Array:
    """Normalised encodings [..., d] -> ids [...] int32 of the nearest codes (blockwise)."""
    flat = jax.lax.stop_gradient(encodings.reshape(-1, self.code_dim))
    ids, _ = blockwise_nearest(flat, jax.lax.stop_gradient(self.codebook()),
                               self.lookup_block_size)
    return ids.reshape(encodings.shape[:-1])

  def encode(self, z: Array) -> Array:
    """Encoder features [B, h, w, C] -> ids [B, h, w] int32."""
    return self.lookup(self.project(z))

  def embed(self, ids: Array) -> Array:
    """ids [B, h, w] -> decoder input features [B, h, w, out_features]."""
    return self.out_proj(gather.take_rows(self.codebook(), ids).astype(self.dtype))

  def __call__(self, z: Array) -> tuple[Array, dict[str, Array]]:
    """Quantises encoder features with the straight-through estimator.

    Returns:
      (decoder input features [B, h, w, out_features], aux) where aux holds `ids`, `encodings`
      (normalised, for dead-code restarts), `loss` (weighted sum) and its parts.
    """
    encodings = self.project(z)
    ids = self.lookup(encodings)
    # take_rows: its gradient sorts instead of scattering (a few codes take most tokens).
    codes = gather.take_rows(self.codebook(), ids)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(encodings) - codes))
    commitment_loss = jnp.mean(jnp.square(encodings - jax.lax.stop_gradient(codes)))
    # Straight-through: forward uses the code, backward passes the gradient to the encoding.
    quantized = encodings + jax.lax.stop_gradient(codes - encodings)
    loss = self.codebook_cost * codebook_loss + self.commitment_cost * commitment_loss
    aux = {"ids": ids, "encodings": encodings, "codebook_loss": codebook_loss,
           "commitment_loss": commitment_loss}
    if self.entropy_weight > 0:
      entropy_loss = self._entropy_loss(encodings.reshape(-1, self.code_dim))
      aux["entropy_loss"] = entropy_loss
      loss = loss + self.entropy_weight * entropy_loss
    aux["loss"] = loss
    return self.out_proj(quantized.astype(self.dtype)), aux

  def _entropy_loss(self, flat: Array) -> Array:
    stride = max(1, flat.shape[0] // self.entropy_max_tokens)
    sample = flat[::stride][: self.entropy_max_tokens]
    logits = jnp.dot(sample, self.codebook().T) / self.entropy_temperature
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.exp(log_probs)
    per_token_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
    mean_probs = jnp.mean(probs, axis=0)
    batch_entropy = -jnp.sum(mean_probs * jnp.log(mean_probs + 1e-9))
    return per_token_entropy - batch_entropy


# ---------------------------------------------------------------------------------------------
# FSQ: an implicit lattice codebook.


def fsq_ids_to_digits(ids: Array | np.ndarray, levels: Sequence[int]):
  """ids [...] -> per-dimension level indices [..., len(levels)] (mixed radix, dim 0 fastest)."""
  xp = jnp if isinstance(ids, jax.Array) else np
  digits = []
  rest = ids
  for level in levels:
    digits.append(rest % level)
    rest = rest // level
  return xp.stack(digits, axis=-1)


def fsq_digits_to_ids(digits, levels: Sequence[int]):
  """Inverse of `fsq_ids_to_digits`."""
  xp = jnp if isinstance(digits, jax.Array) else np
  bases = np.cumprod([1] + list(levels[:-1])).astype(np.int64)
  return xp.sum(digits * xp.asarray(bases, dtype=digits.dtype), axis=-1)


def fsq_codes_from_digits(digits, levels: Sequence[int]):
  """Level indices -> normalised code values in [-1, 1] (float32), per dimension."""
  xp = jnp if isinstance(digits, jax.Array) else np
  half_width = xp.asarray([level // 2 for level in levels], dtype=xp.float32)
  return (digits.astype(xp.float32) - half_width) / half_width


class FiniteScalarQuantizer(nn.Module):
  """FSQ: bound each of `len(levels)` channels and round it to `levels[i]` values.

  Attributes:
    levels: number of values per dimension, e.g. (8, 8, 8, 5, 5, 5) = 64000 codes.
    out_features: width of the features handed to the decoder.
    dtype: compute dtype of the projections.
  """
  levels: Sequence[int]
  out_features: int
  dtype: Any = jnp.float32

  def setup(self):
    if not self.levels or any(int(level) < 2 for level in self.levels):
      raise ValueError(f"FiniteScalarQuantizer: every level must be >= 2, got {self.levels}")
    self.in_proj = _dense(len(self.levels), ("conv_in", None), "in_proj", self.dtype)
    self.out_proj = _dense(self.out_features, (None, "conv_out"), "out_proj", self.dtype)

  @property
  def vocab_size(self) -> int:
    return int(math.prod(int(level) for level in self.levels))

  def _bound(self, z: Array) -> Array:
    """Squashes z so that rounding yields exactly `levels[i]` integers per dimension."""
    levels = jnp.asarray(self.levels, jnp.float32)
    half = (levels - 1) / 2
    # Even level counts are asymmetric around 0 (e.g. 8 -> -4..3): shift by half a step.
    offset = jnp.where(jnp.asarray(self.levels) % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half)
    return jnp.tanh(z.astype(jnp.float32) + shift) * half - offset

  def _quantize(self, z: Array) -> tuple[Array, Array]:
    bounded = self._bound(self.in_proj(z))
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    half_width = jnp.asarray([level // 2 for level in self.levels], jnp.float32)
    digits = jnp.round(jax.lax.stop_gradient(bounded)).astype(jnp.int32) + half_width.astype(
        jnp.int32)
    return rounded / half_width, fsq_digits_to_ids(digits, self.levels).astype(jnp.int32)

  def codebook(self) -> Array:
    """All lattice points [V, len(levels)] in normalised units, row v = code v."""
    ids = np.arange(self.vocab_size)
    return jnp.asarray(fsq_codes_from_digits(fsq_ids_to_digits(ids, self.levels), self.levels))

  def encode(self, z: Array) -> Array:
    return self._quantize(z)[1]

  def embed(self, ids: Array) -> Array:
    codes = fsq_codes_from_digits(fsq_ids_to_digits(ids, self.levels), self.levels)
    return self.out_proj(codes.astype(self.dtype))

  def __call__(self, z: Array) -> tuple[Array, dict[str, Array]]:
    codes, ids = self._quantize(z)
    zero = jnp.zeros((), jnp.float32)
    aux = {"ids": ids, "encodings": codes, "loss": zero}
    return self.out_proj(codes.astype(self.dtype)), aux
