"""Unmask policies: which masked positions a sampler step fills, by name (`UNMASK_POLICIES`).

A policy scores every position (higher = filled first) and may raise the step's count; the
sampler fills the `num_unmask` best-scored masked positions. Adding a policy is one function
here and one entry in the registry (validation reads its keys).

  confidence  MaskGIT: log p(proposal) + annealed Gumbel noise
  halton      a fixed 2-D Halton order over the grid (Halton-MaskGIT): spread out early
  stratified  the Halton order, torus-shifted at random per sample
  entropy     lowest entropy first, and as many as an entropy bound accepts (>= the schedule)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mdd.sampling.noise import counter_uniform, step_seed


@flax.struct.dataclass
class PolicyInputs:
  """What a policy may read at one step; [B, L] per position unless noted."""
  log_probs: jax.Array       # float32 [B, L, V] of the (guided) model
  logp_proposal: jax.Array   # log p of each position's proposed token
  gumbel: jax.Array          # a Gumbel draw per position (its own column of the step's noise)
  uniform: jax.Array         # a uniform draw per position (another column)
  noise: jax.Array           # float32 scalar, the step's confidence-noise scale tau_t
  order_rank: jax.Array      # float32 spatial rank (from `initial_rank`), zeros if none
  masked: jax.Array          # bool, positions still masked
  num_unmask: jax.Array      # int32 [B], what the schedule asks for this step


@dataclasses.dataclass(frozen=True)
class UnmaskPolicy:
  """`select(inputs, config) -> (score [B, L], num_unmask [B])`; `initial_rank(seeds, (h, w),
  config) -> [B, h*w]` gives the spatial order once per sample (None: no spatial order)."""
  select: Callable
  initial_rank: Optional[Callable] = None


def _confidence(inputs: PolicyInputs, config):
  del config
  return inputs.logp_proposal + inputs.noise * inputs.gumbel, inputs.num_unmask


def _spatial(inputs: PolicyInputs, config):
  del config
  return -inputs.order_rank, inputs.num_unmask


def _entropy(inputs: PolicyInputs, config):
  log_probs = inputs.log_probs
  entropy = -jnp.sum(jnp.exp(log_probs) * jnp.where(log_probs > -jnp.inf, log_probs, 0.0),
                     axis=-1)
  # Per-seed jitter: near-ties are ordered by the sample's own random stream, not by the last
  # bits of the logits, which depend on the batch (XLA's matmul blocking follows its size), so
  # a sample does not change with what else is in the batch.
  score = -entropy + config.entropy_noise * inputs.uniform
  accepted = jax.vmap(functools.partial(entropy_bounded_count, bound=config.entropy_bound))(
      entropy, inputs.masked)
  num_masked = jnp.sum(inputs.masked, axis=-1, dtype=jnp.int32)
  return score, jnp.minimum(num_masked, jnp.maximum(inputs.num_unmask, accepted))


def entropy_bounded_count(entropy: jax.Array, candidates: jax.Array, bound: float) -> jax.Array:
  """Length of the longest lowest-entropy prefix of `candidates` with sum(H) - max(H) <= bound.

  For one row: sort the candidate entropies ascending, accept the first j with
  H_1 + ... + H_{j-1} <= bound (the prefix's max is its last element). At least 1 when there is
  any candidate; 0 otherwise.
  """
  sorted_h = jnp.sort(jnp.where(candidates, entropy, jnp.inf))
  sum_before = jnp.concatenate([jnp.zeros((1,), sorted_h.dtype), jnp.cumsum(sorted_h)[:-1]])
  num_candidates = jnp.sum(candidates)
  position = jnp.arange(sorted_h.shape[0])
  return jnp.sum((sum_before <= bound) & (position < num_candidates)).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Halton order.


def _radical_inverse(indices: np.ndarray, base: int) -> np.ndarray:
  result = np.zeros(indices.shape, np.float64)
  scale = 1.0 / base
  n = indices.copy()
  while np.any(n > 0):
    result += (n % base) * scale
    n //= base
    scale /= base
  return result


@functools.lru_cache(maxsize=32)
def halton_order(height: int, width: int) -> np.ndarray:
  """Flat grid indices [height * width] in the order a 2-D Halton sequence first visits them.

  Columns follow base 2 and rows base 3 (Halton-MaskGIT), so early positions are spread over the
  whole grid. A permutation of range(height * width).
  """
  if height < 1 or width < 1:
    raise ValueError(f"halton_order: grid must be at least 1x1, got {height}x{width}")
  num_cells = height * width
  seen = np.zeros(num_cells, bool)
  order = []
  start, chunk = 1, max(64, 4 * num_cells)
  while len(order) < num_cells:
    if start > 10_000 * num_cells + 100_000:
      raise ValueError(f"halton_order: did not cover the {height}x{width} grid")  # cannot happen
    idx = np.arange(start, start + chunk, dtype=np.int64)
    cols = np.minimum((_radical_inverse(idx, 2) * width).astype(np.int64), width - 1)
    rows = np.minimum((_radical_inverse(idx, 3) * height).astype(np.int64), height - 1)
    cells = rows * width + cols
    _, first = np.unique(cells, return_index=True)  # first visit of each cell in this chunk
    new = cells[np.sort(first)]
    new = new[~seen[new]]
    seen[new] = True
    order.extend(new.tolist())
    start += chunk
  result = np.asarray(order, np.int32)
  result.setflags(write=False)
  return result


def _halton_rank(height: int, width: int) -> np.ndarray:
  """rank[cell] = position of the cell in `halton_order`, as a [height, width] array."""
  rank = np.empty(height * width, np.int32)
  rank[halton_order(height, width)] = np.arange(height * width, dtype=np.int32)
  return rank.reshape(height, width)


def _halton_initial_rank(seeds, grid_shape, config):
  del config
  height, width = grid_shape
  rank = jnp.asarray(_halton_rank(height, width))
  return jnp.broadcast_to(rank.reshape(-1), (seeds.shape[0], height * width))


def _stratified_initial_rank(seeds, grid_shape, config):
  """A random per-sample torus shift of the Halton order: still spread out, not identical."""
  height, width = grid_shape
  rank = jnp.asarray(_halton_rank(height, width))

  def shifted(seed):
    # Seeds of a step index the scan never reaches, so the shift is independent of steps.
    shift = counter_uniform(step_seed(seed, config.total_steps), (1, 2))[0]
    shift = (shift * jnp.array([height, width])).astype(jnp.int32)
    dr, dc = shift[0], shift[1]
    rows = (jnp.arange(height)[:, None] + dr) % height
    cols = (jnp.arange(width)[None, :] + dc) % width
    return rank[rows, cols].reshape(-1)

  return jax.vmap(shifted)(seeds)


UNMASK_POLICIES: dict[str, UnmaskPolicy] = {
    "confidence": UnmaskPolicy(select=_confidence),
    "halton": UnmaskPolicy(select=_spatial, initial_rank=_halton_initial_rank),
    "stratified": UnmaskPolicy(select=_spatial, initial_rank=_stratified_initial_rank),
    "entropy": UnmaskPolicy(select=_entropy),
}
