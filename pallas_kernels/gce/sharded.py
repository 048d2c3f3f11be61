"""`sharded_fused_gce`: the fused GCE on a device mesh, one `shard_map` per pass.

XLA cannot partition a `pallas_call` (or reason about the chunked path's scans), so on a mesh it
may gather the hidden states `x [N, D]` or the head `w [V, D]` onto every device. Here each
device runs the unsharded backend (`api._backend`: chunked rows or the Pallas kernels) on its own
block, and every collective is written out:

- rows `N` are split over `row_axes` (the batch axes, plus any axis the head does not use);
- the head `w [V, D]` is either replicated (`vocab_axes=()`: all-gathered once, a parameter-sized
  V x D copy) or split over `vocab_axes` along V.

Forward, per device with rows `n` and vocabulary slice `[start, start + V_local)`:
  lse_local = LSE over the slice (kernel);  lse = m + log psum(exp(lse_local - m)), m = pmax;
  gathered  = psum over the slice owners of z[n, idx] (each of the K+1 neighbour logits comes
              from the one shard that holds that code, the others add 0).
Backward, with the global `lse` as residual: dZ = g softmax(z) - scatter(target coef) is built for
the local slice only, so
  dx = psum over vocab_axes of dZ_local w_local       [n, D]
  dw = psum over row_axes of dZ_local^T x_local        [V_local, D]
The only collectives are of sizes [n] (LSE partials), [n, K+1] (neighbour logits), [n, D] (dx)
and [V_local, D] (dw / the head itself); nothing N x V is ever communicated or materialised.

The custom VJP sits outside both `shard_map`s (forward and backward are separate manual
regions), so autodiff never transposes a collective and every reduction above is explicit.
Ragged N is padded to a multiple of the row shards with ignored rows (label -1), whose loss and
gradient are exactly 0.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pallas_kernels.gce import api

# The pieces `api.fused_gce` is built from, shared so both paths compute the same numbers.
# pylint: disable=protected-access
_group_inputs = api._group_inputs
_row_loss = api._row_loss
_target_coefficients = api._target_coefficients
_backend = api._backend
_check_inputs = api._check_inputs
_BLOCK_KEYS = api._BLOCK_KEYS
# pylint: enable=protected-access

# The fused implementations this wrapper shards (the `xla` path is plain XLA ops, which XLA
# partitions itself).
SHARDED_IMPLS = ("chunked", "pallas_gpu", "pallas_tpu")


def _axes_size(mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _spec_axes(axes: tuple[str, ...]):
  """A PartitionSpec entry for `axes` (None when empty)."""
  return axes if axes else None


def _local_vocab(idx, coef, vocab_axes, local_vocab):
  """Indices into this device's vocabulary slice, and which entries it owns.

  Entries outside the slice point at column 0 with a 0 coefficient (a harmless no-op in the
  backward scatter) and are masked out of the forward's gathered logits.
  """
  if not vocab_axes:
    return idx, coef, None
  start = jax.lax.axis_index(vocab_axes) * local_vocab
  local = idx - start
  inside = (local >= 0) & (local < local_vocab)
  coef = None if coef is None else jnp.where(inside, coef, 0.0)
  return jnp.where(inside, local, 0), coef, inside


def _forward_shard(x, w, labels, neighbours, neighbour_weights, valid, *, config):
  """One device's forward: (loss, lse, gathered, idx, q, fallback, row_ok) of its rows."""
  impl, mode, ce_mix, interpret, blocks, _, _, vocab_axes = config
  idx, q, fallback, row_ok = _group_inputs(
      labels, neighbours, neighbour_weights, valid)
  local_idx, _, inside = _local_vocab(idx, None, vocab_axes, w.shape[0])
  forward, _ = _backend(impl, interpret, dict(blocks), x, w, local_idx)
  lse, gathered = forward(x, w, local_idx)
  if vocab_axes:
    # Combine the slices' log-sum-exps stably, and take each neighbour logit from its owner.
    top = jax.lax.pmax(lse, vocab_axes)
    lse = top + jnp.log(jax.lax.psum(jnp.exp(lse - top), vocab_axes))
    gathered = jax.lax.psum(jnp.where(inside, gathered, 0.0), vocab_axes)
  loss = _row_loss(lse, gathered, q, fallback, row_ok, mode=mode, ce_mix=ce_mix)
  return loss, lse, gathered, idx, q, fallback, row_ok


def _backward_shard(x, w, lse, gathered, idx, q, fallback, row_ok, loss_cotangent, *, config):
  """One device's backward: dx of its rows (summed over vocab shards), dw of its slice."""
  impl, mode, ce_mix, interpret, blocks, _, row_axes, vocab_axes = config
  row_cotangent, target_coef = _target_coefficients(
      gathered, q, fallback, row_ok, loss_cotangent, mode=mode, ce_mix=ce_mix)
  local_idx, target_coef, _ = _local_vocab(idx, target_coef, vocab_axes, w.shape[0])
  _, backward = _backend(impl, interpret, dict(blocks), x, w, local_idx)
  dx, dw = backward(x, w, lse, row_cotangent, local_idx, target_coef)
  if vocab_axes:
    dx = jax.lax.psum(dx.astype(jnp.float32), vocab_axes).astype(x.dtype)
  if row_axes:
    dw = jax.lax.psum(dw.astype(jnp.float32), row_axes).astype(w.dtype)
  return dx, dw


def _specs(config):
  """PartitionSpecs of (row-sharded arrays, head, replicated tables)."""
  *_, row_axes, vocab_axes = config
  return P(_spec_axes(row_axes)), P(_spec_axes(vocab_axes)), P()


def _shard_map(fn, config, in_specs, out_specs):
  # check_vma=False: the backends' scans start their accumulators from unvarying zeros, which the
  # varying-manual-axes check rejects; every reduction here is an explicit psum/pmax instead
  # (and tests/test_gce_sharded.py checks the outputs against the unsharded path).
  mesh = config[5]
  return jax.shard_map(functools.partial(fn, config=config), mesh=mesh, in_specs=in_specs,
                       out_specs=out_specs, check_vma=False)


def _sharded_forward(x, w, labels, neighbours, neighbour_weights, valid, config):
  rows, head, table = _specs(config)
  return _shard_map(_forward_shard, config,
                    in_specs=(rows, head, rows, table, table, rows),
                    out_specs=(rows,) * 7)(x, w, labels, neighbours, neighbour_weights, valid)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _gce_sharded(x, w, labels, neighbours, neighbour_weights, valid, config):
  return _sharded_forward(x, w, labels, neighbours, neighbour_weights, valid, config)[0]


def _gce_sharded_fwd(x, w, labels, neighbours, neighbour_weights, valid, config):
  loss, *residuals = _sharded_forward(x, w, labels, neighbours, neighbour_weights, valid, config)
  return loss, (x, w, *residuals)


def _gce_sharded_bwd(config, residuals, loss_cotangent):
  rows, head, _ = _specs(config)
  dx, dw = _shard_map(_backward_shard, config, in_specs=(rows, head) + (rows,) * 7,
                      out_specs=(rows, head))(*residuals, loss_cotangent)
  return dx, dw, None, None, None, None


_gce_sharded.defvjp(_gce_sharded_fwd, _gce_sharded_bwd)


def _check_axes(mesh, row_axes, vocab_axes, vocab):
  unknown = [a for a in row_axes + vocab_axes if a not in mesh.shape]
  if unknown:
    raise ValueError(f"sharded GCE: axes {unknown} are not in the mesh {dict(mesh.shape)}")
  if len(set(row_axes + vocab_axes)) != len(row_axes + vocab_axes):
    raise ValueError(f"sharded GCE: row_axes {row_axes} and vocab_axes {vocab_axes} must be "
                     "distinct axes")
  vocab_shards = _axes_size(mesh, vocab_axes)
  if vocab % vocab_shards:
    raise ValueError(f"sharded GCE: V={vocab} is not a multiple of the {vocab_shards} shards of "
                     f"vocab_axes {vocab_axes}; pass vocab_axes=() to replicate the head")


@functools.partial(jax.jit, static_argnames=("config",))
def _sharded_jit(x, w, labels, neighbours, neighbour_weights, valid, *, config):
  mesh, row_axes = config[5], config[6]
  num_tokens = x.shape[0]
  compute_dtype = jnp.promote_types(x.dtype, w.dtype)
  x, w = x.astype(compute_dtype), w.astype(compute_dtype)
  labels = labels.astype(jnp.int32)
  valid = jnp.ones((num_tokens,), bool) if valid is None else valid.astype(bool)
  # Ragged N: pad to a multiple of the row shards with ignored rows (loss 0, gradient 0).
  shards = _axes_size(mesh, row_axes)
  padded = -(-num_tokens // shards) * shards
  pad = lambda a, value=0: jnp.pad(a, [(0, padded - num_tokens)] + [(0, 0)] * (a.ndim - 1),
                                   constant_values=value)
  loss = _gce_sharded(pad(x), w, pad(labels, -1), neighbours.astype(jnp.int32),
                      neighbour_weights, pad(valid, False), config)
  return loss[:num_tokens]


def sharded_fused_gce(x: jax.Array, w: jax.Array, labels: jax.Array, neighbours: jax.Array,
                      neighbour_weights: jax.Array, *, mesh, row_axes: Sequence[str],
                      vocab_axes: Sequence[str] = (), mode: str = "soft", ce_mix: float = 0.0,
                      valid: jax.Array | None = None, impl: str = "auto",
                      interpret: bool = False, **block_sizes) -> jax.Array:
  """`api.fused_gce` with rows split over `row_axes` and the head over `vocab_axes` of `mesh`.

  Same arguments, conventions and result (float32 [N]) as `fused_gce`, plus:
    mesh: a `jax.sharding.Mesh`, or the `AbstractMesh` of `jax.set_mesh` when called under jit.
    row_axes: mesh axes that split the rows of `x` (N is padded to their product if needed).
    vocab_axes: mesh axes that split `w` along V (V must be a multiple of their product); empty:
      `w` is replicated and `dw` is summed over `row_axes`. Axes in neither list replicate the
      work, so pass every mesh axis of size > 1 in one of them.
  impl "xla" (and "auto" resolving to it) runs the unsharded `fused_gce`: plain XLA ops that
  XLA's own partitioner handles.
  """
  impl = api.resolve_impl(impl, interpret)
  row_axes, vocab_axes = tuple(row_axes), tuple(vocab_axes)
  if impl not in SHARDED_IMPLS:
    return api.fused_gce(x, w, labels, neighbours, neighbour_weights, mode=mode, ce_mix=ce_mix,
                         valid=valid, impl=impl, interpret=interpret, **block_sizes)
  x, w = jnp.asarray(x), jnp.asarray(w)
  labels, neighbours = jnp.asarray(labels), jnp.asarray(neighbours)
  neighbour_weights = jnp.asarray(neighbour_weights)
  valid = None if valid is None else jnp.asarray(valid)
  _check_inputs(x, w, labels, neighbours, neighbour_weights, valid, mode, ce_mix)
  _check_axes(mesh, row_axes, vocab_axes, w.shape[0])
  unknown = set(block_sizes) - set(_BLOCK_KEYS[impl])
  if unknown:
    raise ValueError(f"impl={impl!r} accepts block sizes {_BLOCK_KEYS[impl]}, "
                     f"got unknown {sorted(unknown)}")
  blocks = tuple(sorted((k, v) for k, v in block_sizes.items() if v is not None))
  config = (impl, mode, float(ce_mix), bool(interpret), blocks, mesh, row_axes, vocab_axes)
  return _sharded_jit(x, w, labels, neighbours, neighbour_weights, valid, config=config)
