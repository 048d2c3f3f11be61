"""Neighbour tables over the token vocabulary, for Grouped Cross-Entropy (GCE).

A table has two arrays of shape [V, K]:
  neighbours int32: row v lists the group of code v, first entry v itself, then its nearest
    codes (closest first), each id at most once, -1 where a row has fewer than K entries;
  weights float32: softmax(-d^2 / temperature) over the row's valid entries, then mixed with
    extra mass `self_mass` on the ground truth (entry 0); 0 on padding, rows sum to 1.

VQ codebooks: cosine kNN over the L2-normalised codebook (d^2 = 2 - 2 cos), computed block by
block with a running top-k, so memory is O(query_block x code_block) and V = 2^18 fits on a CPU.
FSQ: the lattice neighbours of a code, i.e. +-1 level along each dimension (2 * len(levels)
neighbours at most; fewer on the lattice boundary), with d^2 measured in normalised units.

Tables are saved next to the tokenizer checkpoint as `neighbours.npz` (through
`mdd.utils.fileio`, so a workdir may be a `gs://` URL).
"""

from __future__ import annotations

import dataclasses
import zipfile
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mdd.models import quantizers
from mdd.utils import fileio


@dataclasses.dataclass(frozen=True)
class NeighbourTable:
  """neighbours [V, K] int32 (-1 pads), weights [V, K] float32 (0 on padding, rows sum to 1)."""
  neighbours: np.ndarray
  weights: np.ndarray

  def __post_init__(self):
    if self.neighbours.shape != self.weights.shape or self.neighbours.ndim != 2:
      raise ValueError(f"NeighbourTable: neighbours {self.neighbours.shape} and weights "
                       f"{self.weights.shape} must both be [V, K]")

  @property
  def vocab_size(self) -> int:
    return self.neighbours.shape[0]

  @property
  def k(self) -> int:
    return self.neighbours.shape[1]


def save_table(path: str, table: NeighbourTable):
  """Writes `neighbours` and `weights` to an .npz, atomically (`fileio.save_npz`)."""
  fileio.save_npz(path, neighbours=table.neighbours.astype(np.int32),
                  weights=table.weights.astype(np.float32))


def load_table(path: str) -> NeighbourTable:
  """Reads a table written by `save_table`."""
  if not fileio.exists(path):
    raise FileNotFoundError(f"no neighbour table at {path} (train the tokenizer first)")
  try:
    data = fileio.load_npz(path)
  except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as e:
    raise ValueError(f"{path} is corrupt ({type(e).__name__}: {e}); rerun "
                     "--config.mode=train_tokenizer to rewrite it") from None
  if "neighbours" not in data or "weights" not in data:
    raise ValueError(f"{path}: expected arrays 'neighbours' and 'weights', got {list(data)}")
  table = NeighbourTable(data["neighbours"].astype(np.int32), data["weights"].astype(np.float32))
  if table.neighbours.ndim != 2 or table.weights.shape != table.neighbours.shape:
    raise ValueError(f"{path}: neighbours {table.neighbours.shape} and weights "
                     f"{table.weights.shape} are not one [V, K] table")
  return table


# ---------------------------------------------------------------------------------------------
# VQ: blockwise cosine kNN.


def _knn_query_block(queries, query_ids, grouped_codes, num_codes: int, k: int,
                     groups_per_block: int):
  """Exact top-k most similar codes (excluding each query's own id) for a block of queries.

  Two stages keep the sort work small: (1) the max similarity of every group of `g`
  consecutive codes, scanning the codebook; (2) an exact top-k over the members of the k best
  groups. This is exact: each of the k best codes lies in a group whose max is at least the
  k-th best similarity, and at most k groups can have such a max.
  """
  num_groups, group, dim = grouped_codes.shape
  num_blocks = num_groups // groups_per_block
  blocks = grouped_codes.reshape(num_blocks, groups_per_block, group, dim)
  member = jnp.arange(group, dtype=jnp.int32)

  def masked_sims(sims, group_ids):
    ids = group_ids[..., None] * group + member  # [..., g] code ids
    ids = jnp.broadcast_to(ids, sims.shape)
    bad = (ids >= num_codes) | (ids == query_ids.reshape((-1,) + (1,) * (sims.ndim - 1)))
    return jnp.where(bad, -jnp.inf, sims), ids

  def group_max(_, inputs):
    codes, first_group = inputs
    sims = jnp.einsum("qd,hgd->qhg", queries, codes, preferred_element_type=jnp.float32)
    sims, _ = masked_sims(sims, first_group + jnp.arange(groups_per_block, dtype=jnp.int32))
    return None, jnp.max(sims, axis=-1)

  firsts = jnp.arange(num_blocks, dtype=jnp.int32) * groups_per_block
  _, maxima = jax.lax.scan(group_max, None, (blocks, firsts))  # [blocks, q, groups_per_block]
  maxima = jnp.transpose(maxima, (1, 0, 2)).reshape(queries.shape[0], num_groups)
  _, best_groups = jax.lax.top_k(maxima, min(k, num_groups))  # [q, k]
  candidates = jnp.take(grouped_codes, best_groups, axis=0)  # [q, k, g, d]
  sims = jnp.einsum("qd,qkgd->qkg", queries, candidates, preferred_element_type=jnp.float32)
  sims, ids = masked_sims(sims, best_groups)
  sims, ids = sims.reshape(queries.shape[0], -1), ids.reshape(queries.shape[0], -1)
  top_sims, top_pos = jax.lax.top_k(sims, k)
  top_ids = jnp.take_along_axis(ids, top_pos, axis=1)
  return top_sims, jnp.where(jnp.isfinite(top_sims), top_ids, -1)


_knn_query_block_jit = jax.jit(_knn_query_block,
                               static_argnames=("num_codes", "k", "groups_per_block"))


def knn_neighbours(codebook, k: int, block_size: int = 4096, query_block_size: int = 2048,
                   group_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Cosine kNN of every code over the codebook, never building V x V.

  Args:
    codebook: [V, d] (normalised here).
    k: row length including the code itself (k - 1 nearest other codes).
    block_size: codes per block of the similarity scan.
    query_block_size: queries per jitted call. Peak memory is about
      query_block x (V / group_size + block_size + (k - 1) x group_size x (d + 2)) x 4 B.
    group_size: codes per group of the two-stage exact top-k.

  Returns:
    (ids [V, k] int32 with ids[v, 0] = v and -1 padding, squared distances [V, k] float32 of
    the L2-normalised codes, 0 on padding).
  """
  codebook = np.asarray(codebook, np.float32)
  if codebook.ndim != 2 or k < 1:
    raise ValueError(f"knn_neighbours: need codebook [V, d] and k >= 1, got {codebook.shape}, {k}")
  if min(block_size, query_block_size, group_size) < 1:
    raise ValueError("knn_neighbours: block sizes must be positive")
  vocab, dim = codebook.shape
  normed = np.asarray(quantizers.l2_normalize(jnp.asarray(codebook)))
  ids = np.full((vocab, k), -1, np.int32)
  sq_dists = np.zeros((vocab, k), np.float32)
  ids[:, 0] = np.arange(vocab, dtype=np.int32)
  found = min(k - 1, vocab - 1)
  if found == 0:
    return ids, sq_dists
  group = min(group_size, vocab)
  groups_per_block = max(1, min(block_size, vocab) // group)
  # Pad V up to whole blocks of groups (padding is masked) rather than requiring divisibility.
  num_groups = -(-vocab // (group * groups_per_block)) * groups_per_block
  padded = np.zeros((num_groups * group, dim), np.float32)
  padded[:vocab] = normed
  grouped = jnp.asarray(padded.reshape(num_groups, group, dim))
  query_block = min(query_block_size, vocab)
  for start in range(0, vocab, query_block):
    stop = min(start + query_block, vocab)
    # Pad the last query block to the same shape so that it reuses the compiled function.
    queries = np.zeros((query_block, dim), np.float32)
    queries[: stop - start] = normed[start:stop]
    query_ids = np.arange(start, start + query_block, dtype=np.int32)
    sims, block_ids = _knn_query_block_jit(jnp.asarray(queries), jnp.asarray(query_ids),
                                           grouped, num_codes=vocab, k=found,
                                           groups_per_block=groups_per_block)
    sims, block_ids = np.asarray(sims)[: stop - start], np.asarray(block_ids)[: stop - start]
    ids[start:stop, 1:1 + found] = block_ids
    sq_dists[start:stop, 1:1 + found] = np.maximum(2.0 - 2.0 * sims, 0.0)
  sq_dists[ids < 0] = 0.0
  return ids, sq_dists


def brute_force_knn(codebook, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Reference for `knn_neighbours` (dense V x V, small codebooks only)."""
  normed = np.asarray(quantizers.l2_normalize(jnp.asarray(np.asarray(codebook, np.float32))))
  sims = normed @ normed.T
  np.fill_diagonal(sims, -np.inf)
  order = np.argsort(-sims, axis=1, kind="stable")[:, : k - 1]
  vocab = normed.shape[0]
  ids = np.concatenate([np.arange(vocab)[:, None], order], axis=1).astype(np.int32)
  sq = np.concatenate([np.zeros((vocab, 1)), 2 - 2 * np.take_along_axis(sims, order, 1)], 1)
  return ids, np.maximum(sq, 0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# FSQ: lattice neighbours.


def fsq_neighbours(levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """+-1 level along each dimension of the FSQ lattice.

  Returns (ids [V, 1 + 2 * len(levels)] int32, squared distances in normalised code units);
  row v starts with v, then for each dimension the code one level down and one level up
  (where it exists; -1 and distance 0 otherwise), compacted so padding comes last.
  """
  levels = [int(level) for level in levels]
  if not levels or any(level < 2 for level in levels):
    raise ValueError(f"fsq_neighbours: every level must be >= 2, got {levels}")
  vocab = int(np.prod(levels))
  own = np.arange(vocab, dtype=np.int64)
  digits = quantizers.fsq_ids_to_digits(own, levels)
  step_sq = np.asarray([1.0 / (level // 2) ** 2 for level in levels], np.float32)
  columns, dists = [own], [np.zeros(vocab, np.float32)]
  for dim, level in enumerate(levels):
    for delta in (-1, 1):
      moved = digits.copy()
      moved[:, dim] += delta
      valid = (moved[:, dim] >= 0) & (moved[:, dim] < level)
      columns.append(np.where(valid, quantizers.fsq_digits_to_ids(moved, levels), -1))
      dists.append(np.where(valid, step_sq[dim], 0.0).astype(np.float32))
  ids = np.stack(columns, axis=1)
  sq_dists = np.stack(dists, axis=1)
  # Move padding to the end of each row (stable, so the lattice order is kept).
  order = np.argsort(ids < 0, axis=1, kind="stable")
  ids = np.take_along_axis(ids, order, axis=1).astype(np.int32)
  sq_dists = np.take_along_axis(sq_dists, order, axis=1)
  return ids, sq_dists


# ---------------------------------------------------------------------------------------------
# Weights and tables.


def dedupe_rows(ids: np.ndarray, sq_dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Drops repeated ids within a row (keeps the first), moves -1 padding to the end."""
  ids = ids.copy()
  sq_dists = sq_dists.copy()
  order = np.argsort(ids, axis=1, kind="stable")
  sorted_ids = np.take_along_axis(ids, order, axis=1)
  repeated = np.zeros_like(ids, bool)
  repeated_sorted = np.concatenate(
      [np.zeros((ids.shape[0], 1), bool), sorted_ids[:, 1:] == sorted_ids[:, :-1]], axis=1)
  np.put_along_axis(repeated, order, repeated_sorted, axis=1)
  ids[repeated] = -1
  sq_dists[ids < 0] = 0.0
  keep_order = np.argsort(ids < 0, axis=1, kind="stable")
  return (np.take_along_axis(ids, keep_order, 1), np.take_along_axis(sq_dists, keep_order, 1))


def neighbour_weights(ids: np.ndarray, sq_dists: np.ndarray, temperature: float,
                      self_mass: float) -> np.ndarray:
  """softmax(-d^2 / temperature) over valid entries, then `self_mass` extra on entry 0."""
  if temperature <= 0:
    raise ValueError(f"neighbour temperature must be positive, got {temperature}")
  if not 0.0 <= self_mass <= 1.0:
    raise ValueError(f"neighbour self_mass must be in [0, 1], got {self_mass}")
  valid = ids >= 0
  logits = np.where(valid, -sq_dists.astype(np.float64) / temperature, -np.inf)
  logits -= logits.max(axis=1, keepdims=True)
  weights = np.where(valid, np.exp(logits), 0.0)
  weights /= weights.sum(axis=1, keepdims=True)
  weights *= 1.0 - self_mass
  weights[:, 0] += self_mass
  return weights.astype(np.float32)


def build_vq_table(codebook, k: int = 32, temperature: float = 0.1, self_mass: float = 0.5,
                   block_size: int = 4096) -> NeighbourTable:
  """Neighbour table of a VQ codebook [V, d] by blockwise cosine kNN."""
  ids, sq_dists = knn_neighbours(codebook, k, block_size=block_size)
  ids, sq_dists = dedupe_rows(ids, sq_dists)
  return NeighbourTable(ids, neighbour_weights(ids, sq_dists, temperature, self_mass))


def build_fsq_table(levels: Sequence[int], temperature: float = 0.1,
                    self_mass: float = 0.5) -> NeighbourTable:
  """Neighbour table of an FSQ lattice (K = 1 + 2 * len(levels))."""
  ids, sq_dists = dedupe_rows(*fsq_neighbours(levels))
  return NeighbourTable(ids, neighbour_weights(ids, sq_dists, temperature, self_mass))


def table_from_config(tokenizer_cfg, codebook=None) -> NeighbourTable:
  """The table for the tokenizer described by `tokenizer_cfg` (its `model` and `neighbours`).

  `codebook` ([V, d], from `Tokenizer.codebook()`) is needed for VQ, ignored for FSQ.
  """
  model, cfg = tokenizer_cfg.model, tokenizer_cfg.neighbours
  if model.quantizer == "fsq":
    return build_fsq_table(tuple(model.fsq_levels), float(cfg.temperature), float(cfg.self_mass))
  if codebook is None:
    raise ValueError("table_from_config: a VQ tokenizer needs its codebook")
  return build_vq_table(codebook, int(cfg.k), float(cfg.temperature), float(cfg.self_mass),
                        int(cfg.block_size))
