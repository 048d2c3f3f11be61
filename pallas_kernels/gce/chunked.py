"""Chunked pure-JAX building blocks for the fused GCE paths (never N x V at once).

Every fused path (`chunked`, `pallas_gpu`, `pallas_tpu`) splits GCE the same way:

  loss = LSE(x w^T) - target(z_G)      with z_G the K+1 gathered logits of a row,

so only the log-sum-exp needs the full vocabulary. Its gradient, `g * softmax(z)`, is produced one
bounded block at a time, the sparse target is scattered into that block, and two plain matmuls
give the block's share of `dx` and `dw`:
- `chunked_backward` (impl="chunked"): blocks of rows `[chunk, V]`; dw accumulates in float32.
- `vocab_chunked_backward` (kernel paths): blocks of vocabulary columns `[N, vocab_chunk]`; dx
  accumulates in float32 (N x D, far smaller than V x D) and each dw block is written once.
The backends differ only in who computes `LSE` and the `dlogits` block: plain XLA ops here, or
the Pallas kernels in `gpu.py` / `tpu.py`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Finite stand-in for -inf: exp(NEG_INF - m) is exactly 0 in float32 and never yields inf - inf.
NEG_INF = -1e30


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def pad_axis(a: jax.Array, size: int, axis: int = 0, value=0) -> jax.Array:
  """Pads `a` along `axis` up to `size` with `value` (no-op when already that size)."""
  extra = size - a.shape[axis]
  if extra == 0:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, extra)
  return jnp.pad(a, widths, constant_values=value)


def matmul_precision(dtype):
  """float32 operands get full fp32 matmuls (GPUs default to TF32); bf16 keeps the default."""
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _dot(a, b, dims):
  return jax.lax.dot_general(a, b, (dims, ((), ())), precision=matmul_precision(a.dtype),
                             preferred_element_type=jnp.float32)


def _contract_last(a: jax.Array, b: jax.Array) -> jax.Array:
  """`a @ b.T` with float32 accumulation, whatever the operand dtype."""
  return _dot(a, b, ((1,), (1,)))


def _to_chunks(a: jax.Array, num_rows: int, chunk_size: int) -> jax.Array:
  """[N, ...] -> [num_chunks, chunk_size, ...], zero-padding the last chunk."""
  a = pad_axis(a, num_rows, axis=0)
  return a.reshape((num_rows // chunk_size, chunk_size) + a.shape[1:])


def chunk_rows(num_tokens: int, chunk_size: int, multiple: int = 1) -> tuple[int, int]:
  """Returns (chunk, padded N): the chunk is at most `chunk_size` and a multiple of `multiple`."""
  chunk = round_up(min(chunk_size, num_tokens), multiple)
  return chunk, round_up(num_tokens, chunk)


def chunked_forward(x, w, idx, *, chunk_size: int):
  """LSE [N] and gathered logits [N, K+1] (float32), one `chunk x V` logits block at a time."""
  num_tokens = x.shape[0]
  chunk, padded = chunk_rows(num_tokens, chunk_size)

  def one_chunk(_, inputs):
    x_c, idx_c = inputs
    logits = _contract_last(x_c, w)                                   # [chunk, V] f32
    lse = jax.nn.logsumexp(logits, axis=1)
    return None, (lse, jnp.take_along_axis(logits, idx_c, axis=1))

  _, (lse, gathered) = jax.lax.scan(
      one_chunk, None, (_to_chunks(x, padded, chunk), _to_chunks(idx, padded, chunk)))
  return lse.reshape(-1)[:num_tokens], gathered.reshape(padded, -1)[:num_tokens]


def gathered_logits(x, w, idx, *, chunk_size: int):
  """z[n, idx[n, k]] in float32 without materialising w[idx] for all rows at once."""
  num_tokens = x.shape[0]
  chunk, padded = chunk_rows(num_tokens, chunk_size)

  def one_chunk(_, inputs):
    x_c, idx_c = inputs
    rows = jnp.take(w, idx_c, axis=0)                                 # [chunk, K+1, D]
    return None, jnp.einsum("nd,nkd->nk", x_c, rows, precision=matmul_precision(x_c.dtype),
                            preferred_element_type=jnp.float32)

  _, gathered = jax.lax.scan(
      one_chunk, None, (_to_chunks(x, padded, chunk), _to_chunks(idx, padded, chunk)))
  return gathered.reshape(padded, -1)[:num_tokens]


def xla_dlogits(x_c, w, lse_c, g_c):
  """g * softmax(x_c w^T) for one chunk, float32 (the pure-XLA twin of the kernels)."""
  return g_c[:, None] * jnp.exp(_contract_last(x_c, w) - lse_c[:, None])


DlogitsFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def chunked_backward(x, w, lse, row_cotangent, idx, target_coef, *, chunk_size: int,
                     dlogits_fn: DlogitsFn = xla_dlogits, row_multiple: int = 1):
  """Gradients of `sum_n g_n * (LSE_n - target_n)` w.r.t. x [N, D] and w [V', D].

  dZ = g * softmax(z) - scatter(target_coef at idx) is built one row chunk at a time by
  `dlogits_fn(x_c, w, lse_c, g_c) -> [chunk, V']`; the scatter and the two matmuls run in the
  operand dtype of x/w with float32 accumulation (bf16 dZ operands keep the backward GEMMs on the
  bf16 tensor-core path). `w` may carry zero padding rows (V' >= V); the caller slices dw.
  """
  num_tokens, dim = x.shape
  compute_dtype = x.dtype
  chunk, padded = chunk_rows(num_tokens, chunk_size, row_multiple)
  row_ids = jnp.arange(chunk)[:, None]

  def one_chunk(dw_acc, inputs):
    x_c, lse_c, g_c, idx_c, coef_c = inputs
    dlogits = dlogits_fn(x_c, w, lse_c, g_c)
    dlogits = dlogits.at[row_ids, idx_c].add(-coef_c.astype(dlogits.dtype))
    dlogits = dlogits.astype(compute_dtype)
    dx_c = _dot(dlogits, w, ((1,), (0,)))
    dw_acc = dw_acc + _dot(dlogits, x_c, ((0,), (0,)))
    return dw_acc, dx_c.astype(x.dtype)

  inputs = tuple(_to_chunks(a, padded, chunk)
                 for a in (x, lse, row_cotangent, idx, target_coef))
  dw, dx = jax.lax.scan(one_chunk, jnp.zeros((w.shape[0], dim), jnp.float32), inputs)
  return dx.reshape(padded, dim)[:num_tokens], dw.astype(w.dtype)


def vocab_chunked_backward(x, w, lse, row_cotangent, idx, target_coef, *, vocab_chunk: int,
                           dlogits_fn: DlogitsFn):
  """Gradients of `sum_n g_n * (LSE_n - target_n)` w.r.t. x [N, D] and w [V', D], V' % chunk == 0.

  `dlogits_fn(x, w_c, lse, g) -> [N, vocab_chunk]` gives g * softmax for one block of vocabulary
  rows `w_c`; zero padding rows of `w` are harmless (their dZ column meets a zero w row in dx and
  their dw rows are sliced off by the caller). Extra memory: one dZ block (N x vocab_chunk in the
  operand dtype) plus the float32 dx accumulator.
  """
  num_tokens, dim = x.shape
  num_chunks = w.shape[0] // vocab_chunk
  row_ids = jnp.arange(num_tokens)[:, None]

  def one_chunk(dx_acc, inputs):
    w_c, start = inputs
    dlogits = dlogits_fn(x, w_c, lse, row_cotangent)
    local = idx - start
    inside = (local >= 0) & (local < vocab_chunk)
    dlogits = dlogits.at[row_ids, jnp.where(inside, local, vocab_chunk)].add(
        jnp.where(inside, -target_coef, 0.0).astype(dlogits.dtype), mode="drop")
    dlogits = dlogits.astype(x.dtype)
    dx_acc = dx_acc + _dot(dlogits, w_c, ((1,), (0,)))
    dw_c = _dot(dlogits, x, ((0,), (0,)))
    return dx_acc, dw_c.astype(w.dtype)

  starts = jnp.arange(num_chunks, dtype=jnp.int32) * vocab_chunk
  dx, dw = jax.lax.scan(one_chunk, jnp.zeros((num_tokens, dim), jnp.float32),
                        (w.reshape(num_chunks, vocab_chunk, dim), starts))
  return dx.astype(x.dtype), dw.reshape(num_chunks * vocab_chunk, dim)


def vocab_chunking(vocab: int, num_rows: int, block_v: int, itemsize: int,
                   vocab_chunk: int | None, budget_bytes: int = 1 << 30) -> tuple[int, int]:
  """(vocab_chunk, padded V): chunks of whole `block_v` tiles, dZ block ~`budget_bytes`."""
  tiles = -(-vocab // block_v)
  if vocab_chunk is None:
    tiles_per_chunk = max(1, budget_bytes // max(1, num_rows * itemsize * block_v))
  else:
    if vocab_chunk % block_v:
      raise ValueError(f"vocab_chunk={vocab_chunk} must be a multiple of block_v={block_v}")
    tiles_per_chunk = vocab_chunk // block_v
  num_chunks = -(-tiles // tiles_per_chunk)
  tiles_per_chunk = -(-tiles // num_chunks)          # balance the chunks: least padding
  return tiles_per_chunk * block_v, tiles_per_chunk * block_v * num_chunks


def gather_chunk_rows(num_gathered: int, dim: int, itemsize: int,
                      budget_bytes: int = 1 << 27) -> int:
  """Rows per step of `gathered_logits` so that w[idx] of one step stays ~`budget_bytes`."""
  return max(8, budget_bytes // max(1, num_gathered * dim * itemsize) // 8 * 8)
