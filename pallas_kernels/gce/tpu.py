"""Pallas Mosaic-TPU kernels for the fused GCE: LSE forward and softmax-gradient chunks.

Same split as the GPU path (`gpu.py`, `chunked.py`): the kernels own everything that touches all
V logits; the K-sparse group term and the two backward GEMMs (`dZ w`, `dZ^T x`, one row chunk at
a time) are plain XLA, which already runs matmuls near the MXU roofline on TPU.

- `linear_lse`: grid (row blocks "parallel", vocab blocks "arbitrary"); the x block [block_n, D]
  stays in VMEM while w blocks [block_v, D] stream by; online max / sum in fp32 VMEM scratch.
- `softmax_chunk`: grid (row blocks, vocab blocks) over all rows x one block of the vocabulary,
  both "parallel"; writes g * softmax(z) tiles (the backward then runs per vocabulary block,
  `chunked.vocab_chunked_backward`).

Blocks respect the (8, 128) tiling: block_n a multiple of 16 (8 sublanes, x2 for bf16 packing),
block_v and D multiples of 128 (D is zero-padded when
not). Per-row scalars (lse, g) travel as lane-replicated [rows, 128] f32 arrays so every block is
a native (8, 128) tile. VMEM use is estimated from the block sizes and passed as
`vmem_limit_bytes`; blocks that need more than `_VMEM_CAP` raise a clear error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.gce import chunked as chunked_lib

NEG_INF = chunked_lib.NEG_INF
LANES = 128
# Smallest VMEM among current TPUs (v7x: 64 MiB per core); leave room for Mosaic's own scratch.
_VMEM_CAP = 48 * 1024 * 1024


def _vmem_estimate(block_n: int, block_v: int, dim: int, itemsize: int) -> int:
  inputs = 2 * (block_n + block_v) * dim * itemsize          # double-buffered x and w blocks
  tile = 3 * block_n * block_v * 4                            # fp32 logits + exp temporaries
  outputs = 2 * block_n * max(block_v * itemsize, LANES * 4)  # double-buffered output block
  scalars = 6 * block_n * LANES * 4                           # lse / g inputs, max / sum scratch
  return inputs + tile + outputs + scalars


def _compiler_params(block_n, block_v, dim, itemsize, semantics, vmem_limit_bytes):
  needed = _vmem_estimate(block_n, block_v, dim, itemsize)
  if vmem_limit_bytes is None:
    if needed > _VMEM_CAP:
      raise ValueError(
          f"pallas_tpu blocks need ~{needed >> 20} MiB of VMEM (> {_VMEM_CAP >> 20} MiB) for "
          f"block_n={block_n}, block_v={block_v}, D={dim}: use smaller blocks")
    vmem_limit_bytes = max(32 * 1024 * 1024, int(needed * 1.25))
  return pltpu.CompilerParams(dimension_semantics=semantics,
                              vmem_limit_bytes=int(vmem_limit_bytes))


def _contract_last(a, b):
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def _lse_kernel(x_ref, w_ref, lse_ref, max_scratch, sum_scratch, *, vocab, mask_cols):
  vocab_block = pl.program_id(1)
  block_v = w_ref.shape[0]

  @pl.when(vocab_block == 0)
  def _init():
    max_scratch[...] = jnp.full(max_scratch.shape, NEG_INF, jnp.float32)
    sum_scratch[...] = jnp.zeros(sum_scratch.shape, jnp.float32)

  logits = _contract_last(x_ref[...], w_ref[...])                         # [block_n, block_v]
  if mask_cols:
    cols = vocab_block * block_v + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    logits = jnp.where(cols < vocab, logits, NEG_INF)
  prev_max = max_scratch[:, :1]
  new_max = jnp.maximum(prev_max, jnp.max(logits, axis=1, keepdims=True))
  new_sum = (sum_scratch[:, :1] * jnp.exp(prev_max - new_max)
             + jnp.sum(jnp.exp(logits - new_max), axis=1, keepdims=True))
  max_scratch[...] = jnp.broadcast_to(new_max, max_scratch.shape)
  sum_scratch[...] = jnp.broadcast_to(new_sum, sum_scratch.shape)

  @pl.when(vocab_block == pl.num_programs(1) - 1)
  def _finish():
    lse_ref[...] = max_scratch[...] + jnp.log(sum_scratch[...])


@functools.partial(jax.jit, static_argnames=("vocab", "block_n", "block_v", "interpret",
                                             "vmem_limit_bytes"))
def linear_lse(x, w, *, vocab: int, block_n: int = 512, block_v: int = 512,
               interpret: bool = False, vmem_limit_bytes: int | None = None):
  """logsumexp(x w[:vocab]^T, axis=1) fp32 [N']; needs N' % block_n == 0, V' % block_v == 0."""
  num_rows, dim = x.shape
  padded_vocab = w.shape[0]
  kernel = functools.partial(_lse_kernel, vocab=vocab, mask_cols=padded_vocab != vocab)
  lse = pl.pallas_call(
      kernel,
      grid=(num_rows // block_n, padded_vocab // block_v),
      in_specs=[pl.BlockSpec((block_n, dim), lambda i, j: (i, 0)),
                pl.BlockSpec((block_v, dim), lambda i, j: (j, 0))],
      out_specs=pl.BlockSpec((block_n, LANES), lambda i, j: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((num_rows, LANES), jnp.float32),
      scratch_shapes=[pltpu.VMEM((block_n, LANES), jnp.float32),
                      pltpu.VMEM((block_n, LANES), jnp.float32)],
      compiler_params=_compiler_params(block_n, block_v, dim, x.dtype.itemsize,
                                       ("parallel", "arbitrary"), vmem_limit_bytes),
      interpret=interpret,
      name="gce_linear_lse_tpu",
  )(x, w)
  return lse[:, 0]


def _softmax_kernel(x_ref, w_ref, lse_ref, g_ref, out_ref):
  logits = _contract_last(x_ref[...], w_ref[...])
  probs = jnp.exp(logits - lse_ref[:, :1]) * g_ref[:, :1]
  out_ref[...] = probs.astype(out_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_n", "block_v", "interpret",
                                             "vmem_limit_bytes"))
def softmax_chunk(x, w, lse, g, *, block_n: int = 512, block_v: int = 512,
                  interpret: bool = False, vmem_limit_bytes: int | None = None):
  """g[:, None] * softmax(x w^T) [N, V'] in x.dtype for a block of vocabulary rows `w`."""
  num_rows, dim = x.shape
  lanes = lambda a: jnp.broadcast_to(a.astype(jnp.float32)[:, None], (num_rows, LANES))
  row_spec = pl.BlockSpec((block_n, LANES), lambda i, j: (i, 0))
  return pl.pallas_call(
      _softmax_kernel,
      grid=(num_rows // block_n, w.shape[0] // block_v),
      in_specs=[pl.BlockSpec((block_n, dim), lambda i, j: (i, 0)),
                pl.BlockSpec((block_v, dim), lambda i, j: (j, 0)), row_spec, row_spec],
      out_specs=pl.BlockSpec((block_n, block_v), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((num_rows, w.shape[0]), x.dtype),
      compiler_params=_compiler_params(block_n, block_v, dim, x.dtype.itemsize,
                                       ("parallel", "parallel"), vmem_limit_bytes),
      interpret=interpret,
      name="gce_softmax_chunk_tpu",
  )(x, w, lanes(lse), lanes(g))


def make_backend(*, interpret: bool, num_tokens: int, vocab: int, block_n: int = 512,
                 block_v: int = 512, vocab_chunk: int | None = None,
                 vmem_limit_bytes: int | None = None, itemsize: int = 2,
                 num_neighbours: int = 1):
  """(forward, backward) functions for `api._gce_fused` built on the Mosaic-TPU kernels."""
  if block_n % 16 or block_n <= 0:
    raise ValueError(f"pallas_tpu block_n must be a positive multiple of 16, got {block_n}")
  if block_v % LANES or block_v <= 0:
    raise ValueError(f"pallas_tpu block_v must be a positive multiple of {LANES}, got {block_v}")
  padded_rows = chunked_lib.round_up(num_tokens, block_n)
  vocab_chunk, padded_vocab = chunked_lib.vocab_chunking(
      vocab, padded_rows, block_v, itemsize, vocab_chunk)
  block_args = dict(block_n=block_n, block_v=block_v, interpret=interpret,
                    vmem_limit_bytes=vmem_limit_bytes)

  def pad_operands(x, w):
    dim = chunked_lib.round_up(x.shape[1], LANES)
    return (chunked_lib.pad_axis(chunked_lib.pad_axis(x, dim, axis=1), padded_rows),
            chunked_lib.pad_axis(chunked_lib.pad_axis(w, dim, axis=1), padded_vocab))

  def forward(x, w, idx):
    x_pad, w_pad = pad_operands(x, w)
    lse = linear_lse(x_pad, w_pad, vocab=vocab, **block_args)[:num_tokens]
    rows = chunked_lib.gather_chunk_rows(num_neighbours, x.shape[1], itemsize)
    return lse, chunked_lib.gathered_logits(x, w, idx, chunk_size=rows)

  def backward(x, w, lse, g, idx, coef):
    dim = x.shape[1]
    x_pad, w_pad = pad_operands(x, w)
    pad_rows = lambda a: chunked_lib.pad_axis(a, padded_rows)
    dx, dw = chunked_lib.vocab_chunked_backward(
        x_pad, w_pad, pad_rows(lse), pad_rows(g), pad_rows(idx), pad_rows(coef),
        vocab_chunk=vocab_chunk, dlogits_fn=functools.partial(softmax_chunk, **block_args))
    return dx[:num_tokens, :dim], dw[:vocab, :dim]

  return forward, backward
