"""Row gathers whose gradient is a sort + segmented scan instead of a scatter-add.

`jnp.take(table, ids)` differentiates into a scatter-add of the output gradient into the table.
XLA GPU runs that scatter with atomics, which serialise when many ids are equal: in a VQ
tokenizer a few codes (the background) take most tokens, and that one scatter was most of the
H200 tokenizer step (docs/benchmarks.md). `take_rows` gathers the same rows but its gradient
sorts the ids, sums each run of equal ids with a segmented scan and reads the run ends out
with gathers: no scatter, no atomics, and the sum is a tree (not a serial chain) in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _segmented_add(left, right):
  """Combine of a segmented inclusive scan: a run restarts where `right` starts one."""
  left_start, left_sum = left
  right_start, right_sum = right
  return left_start | right_start, jnp.where(right_start[:, None], right_sum,
                                             left_sum + right_sum)


def segment_sum_sorted(values: Array, ids: Array, num_segments: int) -> Array:
  """out[k] = sum of values[i] over ids[i] == k, for values [N, d] and ids [N] int.

  Same result as `jax.ops.segment_sum(values, ids, num_segments)` (ids outside
  [0, num_segments) are dropped), computed in float32 and returned in `values.dtype`.
  """
  if values.ndim != 2 or ids.shape != values.shape[:1]:
    raise ValueError(f"segment_sum_sorted: need values [N, d] and ids [N], got "
                     f"{values.shape} and {ids.shape}")
  ids = ids.astype(jnp.int32)
  order = jnp.argsort(ids, stable=True)
  sorted_ids = ids[order]
  sorted_values = values[order].astype(jnp.float32)
  starts = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
  _, run_sums = jax.lax.associative_scan(_segmented_add, (starts, sorted_values))
  segments = jnp.arange(num_segments, dtype=jnp.int32)
  first = jnp.searchsorted(sorted_ids, segments, side="left")
  last = jnp.searchsorted(sorted_ids, segments, side="right") - 1
  sums = jnp.take(run_sums, jnp.clip(last, 0, ids.shape[0] - 1), axis=0)
  return jnp.where((last >= first)[:, None], sums, 0.0).astype(values.dtype)


def count_ids(ids: Array, num_segments: int) -> Array:
  """How often each of 0..num_segments-1 occurs in `ids` ([num_segments] float32), by sorting
  (the same counts as a segment-sum of ones, without its scatter)."""
  sorted_ids = jnp.sort(ids.reshape(-1).astype(jnp.int32))
  segments = jnp.arange(num_segments, dtype=jnp.int32)
  return (jnp.searchsorted(sorted_ids, segments, side="right")
          - jnp.searchsorted(sorted_ids, segments, side="left")).astype(jnp.float32)


@jax.custom_vjp
def take_rows(table: Array, ids: Array) -> Array:
  """table [V, d], ids [...] int -> table[ids] [..., d]; the gradient is `segment_sum_sorted`."""
  return jnp.take(table, ids, axis=0)


def _take_rows_fwd(table, ids):
  # An empty [V, 0] array carries the table's row count and dtype to the backward pass.
  return jnp.take(table, ids, axis=0), (ids, jnp.zeros((table.shape[0], 0), table.dtype))


def _take_rows_bwd(residual, grad):
  ids, like = residual
  flat = grad.reshape(-1, grad.shape[-1])
  table_grad = segment_sum_sorted(flat, ids.reshape(-1), like.shape[0]).astype(like.dtype)
  return table_grad, np.zeros(ids.shape, jax.dtypes.float0)  # integer ids: float0 cotangent


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)
