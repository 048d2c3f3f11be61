"""Pallas GPU kernels (Triton lowering) for the fused GCE: LSE forward and softmax-gradient chunks.

Why Triton lowering rather than Mosaic GPU: the same code (`pallas_call` +
`jax.experimental.pallas.triton.CompilerParams(num_warps, num_stages)`) compiles and runs under
both JAX versions this repo must support (0.10.2 pinned here, 0.11.2 on the lent H200), its
interpreter runs the kernels on CPU for tests, and it is fast enough: on the H200 both kernels
run at ~620-640 TFLOP/s, 0.88 of the run's best XLA bf16 GEMM rate (docs/benchmarks.md).
Mosaic GPU (wgmma + TMA, warp specialisation) is the upstream direction and the next step if
the last ~10% matter.

Kernels (both recompute logits tile by tile, `x` rows against `w` rows, fp32 accumulation over
`block_k` slices of D, so Triton software-pipelines the loads with `num_stages`):
- `linear_lse`: grid (vocab splits, row blocks); each program streams its share of the vocabulary
  keeping an online max / sum in fp32 per row; the splits are merged in XLA. The split axis is the
  fastest-varying grid axis so that programs running together share the same x block in L2.
- `softmax_chunk`: one program per `[block_n, block_v]` tile of all rows x one block of the
  vocabulary, in grouped order (a few row tiles x a few vocab tiles run together and share L2);
  writes `g * softmax(z)` in the operand dtype (bf16 dZ operands keep the backward GEMMs on the
  bf16 tensor-core path).

The backward then runs `dx += dZ w_c` and `dw_c = dZ^T x` as cuBLAS GEMMs per vocabulary block
(`chunked.vocab_chunked_backward`): a fully fused dx would need a [block_n, D] fp32 accumulator
(1 MiB at D=2048) or recomputing the logits once per D tile, and a fused dw needs atomics; two
library GEMMs on a bounded bf16 dZ block (N x vocab_chunk x 2 bytes, ~1 GiB by default) do 4 of
the 8 NVD flops at cuBLAS speed. Blocks of vocabulary rather than rows keep the only float32
accumulator at N x D (dx) instead of V x D (dw).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels.gce import chunked as chunked_lib

NEG_INF = chunked_lib.NEG_INF


def _is_power_of_2(value: int) -> bool:
  return value > 0 and value & (value - 1) == 0


def _tile_logits(x_ref, w_ref, row_start, vocab_start, block_n, block_v, block_k):
  """fp32 logits of one [block_n, block_v] tile, accumulated over D in block_k slices."""
  dim = x_ref.shape[1]

  def k_step(k, acc):
    x_tile = x_ref[pl.ds(row_start, block_n), pl.ds(k * block_k, block_k)]
    w_tile = w_ref[pl.ds(vocab_start, block_v), pl.ds(k * block_k, block_k)]
    # HIGHEST: float32 operands get IEEE fp32 (not TF32); no effect on bf16 operands.
    return acc + jax.lax.dot_general(x_tile, w_tile, (((1,), (1,)), ((), ())),
                                     precision=jax.lax.Precision.HIGHEST,
                                     preferred_element_type=jnp.float32)

  return jax.lax.fori_loop(0, dim // block_k, k_step,
                           jnp.zeros((block_n, block_v), jnp.float32))


def _lse_kernel(x_ref, w_ref, max_ref, sum_ref, *, block_v, block_k, blocks_per_split, vocab,
                mask_cols, split_axis):
  split = pl.program_id(split_axis)
  block_n = x_ref.shape[0]

  def vocab_step(j, carry):
    running_max, running_sum = carry
    vocab_start = (split * blocks_per_split + j) * block_v
    logits = _tile_logits(x_ref, w_ref, 0, vocab_start, block_n, block_v, block_k)
    if mask_cols:
      cols = vocab_start + jnp.arange(block_v)
      logits = jnp.where(cols[None, :] < vocab, logits, NEG_INF)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
    return new_max, running_sum

  init = (jnp.full((block_n,), NEG_INF, jnp.float32), jnp.zeros((block_n,), jnp.float32))
  running_max, running_sum = jax.lax.fori_loop(0, blocks_per_split, vocab_step, init)
  max_ref[...] = running_max
  sum_ref[...] = running_sum


def default_num_splits(row_blocks: int, vocab_blocks: int) -> int:
  """Enough programs for ~8 waves on a 132-SM H200 (~1024 programs), at most one per block."""
  splits = 1
  while splits * row_blocks < 1024 and splits * 2 <= vocab_blocks:
    splits *= 2
  return splits


@functools.partial(jax.jit, static_argnames=(
    "vocab", "block_n", "block_v", "block_k", "num_warps", "num_stages", "num_splits",
    "interpret", "splits_fastest"))
def linear_lse(x, w, *, vocab: int, block_n: int = 128, block_v: int = 256, block_k: int = 64,
               num_warps: int = 8, num_stages: int = 3, num_splits: int | None = None,
               interpret: bool = False, splits_fastest: bool = True):
  """logsumexp(x w[:vocab]^T, axis=1) in fp32 [N]; x [N', D], w [V', D] pre-padded (see below).

  Requires N' % block_n == 0, D % block_k == 0; pads w to a multiple of block_v * splits.
  `splits_fastest=False` puts row blocks on the fastest grid axis (kept for benchmarking).
  """
  num_rows, dim = x.shape
  row_blocks = num_rows // block_n
  vocab_blocks = pl.cdiv(vocab, block_v)
  splits = num_splits or default_num_splits(row_blocks, vocab_blocks)
  blocks_per_split = pl.cdiv(vocab_blocks, splits)
  padded_vocab = blocks_per_split * splits * block_v
  w = chunked_lib.pad_axis(w[:vocab], padded_vocab)
  kernel = functools.partial(
      _lse_kernel, block_v=block_v, block_k=block_k, blocks_per_split=blocks_per_split,
      vocab=vocab, mask_cols=padded_vocab != vocab, split_axis=0 if splits_fastest else 1)
  part_shape = jax.ShapeDtypeStruct((splits, num_rows), jnp.float32)
  if splits_fastest:
    grid, order = (splits, row_blocks), lambda s, i: (s, i)
  else:
    grid, order = (row_blocks, splits), lambda i, s: (s, i)
  part_spec = pl.BlockSpec((None, block_n), lambda *ids: order(*ids))
  maxes, sums = pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=[pl.BlockSpec((block_n, dim), lambda *ids: (order(*ids)[1], 0)),
                pl.BlockSpec((padded_vocab, dim), lambda *ids: (0, 0))],
      out_specs=[part_spec, part_spec],
      out_shape=[part_shape, part_shape],
      compiler_params=pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="gce_linear_lse",
  )(x, w)
  top = jnp.max(maxes, axis=0)
  return top + jnp.log(jnp.sum(sums * jnp.exp(maxes - top[None, :]), axis=0))


def _softmax_kernel(x_ref, w_ref, lse_ref, g_ref, out_ref, *, block_k):
  block_n, block_v = out_ref.shape
  logits = _tile_logits(x_ref, w_ref, 0, 0, block_n, block_v, block_k)
  probs = jnp.exp(logits - lse_ref[...][:, None]) * g_ref[...][:, None]
  out_ref[...] = probs.astype(out_ref.dtype)


def _grouped_tile(pid, row_tiles: int, col_tiles: int, group_rows: int):
  """1-D program id -> (row tile, vocab tile), `group_rows` row tiles per column sweep.

  Programs that run together then cover a few row tiles x a few vocab tiles, so both the x and
  the w tiles they read are shared through L2 (the usual grouped matmul ordering).
  """
  group_rows = min(group_rows, row_tiles)
  per_group = group_rows * col_tiles
  group = pid // per_group
  first_row = group * group_rows
  rows_here = jnp.minimum(row_tiles - first_row, group_rows)
  within = pid % per_group
  return first_row + within % rows_here, within // rows_here


@functools.partial(jax.jit, static_argnames=(
    "block_n", "block_v", "block_k", "num_warps", "num_stages", "group_rows", "interpret"))
def softmax_chunk(x, w, lse, g, *, block_n: int = 128, block_v: int = 256, block_k: int = 64,
                  num_warps: int = 8, num_stages: int = 3, group_rows: int = 16,
                  interpret: bool = False):
  """g[:, None] * softmax(x w^T) [N, V'] in x.dtype, given the full-vocabulary lse [N].

  `w` is a block of vocabulary rows; requires N % block_n == 0, V' % block_v == 0 and
  D % block_k == 0.
  """
  num_rows, dim = x.shape
  row_tiles, col_tiles = num_rows // block_n, w.shape[0] // block_v
  tile = functools.partial(_grouped_tile, row_tiles=row_tiles, col_tiles=col_tiles,
                           group_rows=group_rows)

  def row_block(pid):
    return tile(pid)[0]

  return pl.pallas_call(
      functools.partial(_softmax_kernel, block_k=block_k),
      grid=(row_tiles * col_tiles,),
      in_specs=[pl.BlockSpec((block_n, dim), lambda p: (row_block(p), 0)),
                pl.BlockSpec((block_v, dim), lambda p: (tile(p)[1], 0)),
                pl.BlockSpec((block_n,), lambda p: (row_block(p),)),
                pl.BlockSpec((block_n,), lambda p: (row_block(p),))],
      out_specs=pl.BlockSpec((block_n, block_v), lambda p: tile(p)),
      out_shape=jax.ShapeDtypeStruct((num_rows, w.shape[0]), x.dtype),
      compiler_params=pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="gce_softmax_chunk",
  )(x, w, lse, g)


def make_backend(*, interpret: bool, num_tokens: int, vocab: int, block_n: int = 128,
                 block_v: int = 256, block_k: int | None = None, num_warps: int = 8,
                 num_stages: int = 3, num_splits: int | None = None,
                 bwd_block_n: int | None = None, bwd_block_v: int | None = None,
                 bwd_block_k: int | None = None, bwd_num_warps: int | None = None,
                 bwd_num_stages: int | None = None, bwd_group_rows: int = 16,
                 vocab_chunk: int | None = None, itemsize: int = 2, num_neighbours: int = 1):
  """(forward, backward) functions for `api._gce_fused` built on the Triton-lowered kernels."""
  # 4-byte operands double the shared memory per pipeline stage: halve the D slice.
  block_k = block_k or (64 if itemsize <= 2 else 32)
  bwd_block_n = bwd_block_n or block_n
  bwd_block_v = bwd_block_v or block_v
  bwd_block_k = bwd_block_k or block_k
  bwd_num_warps = bwd_num_warps or num_warps
  bwd_num_stages = bwd_num_stages or num_stages
  for name, value in (("block_n", block_n), ("block_v", block_v), ("block_k", block_k),
                      ("bwd_block_n", bwd_block_n), ("bwd_block_v", bwd_block_v),
                      ("bwd_block_k", bwd_block_k)):
    if not _is_power_of_2(value) or value < 16:
      raise ValueError(f"pallas_gpu {name} must be a power of 2 >= 16, got {value}")
  if num_splits is not None and num_splits < 1:
    raise ValueError(f"pallas_gpu num_splits must be >= 1, got {num_splits}")
  if bwd_group_rows < 1:
    raise ValueError(f"pallas_gpu bwd_group_rows must be >= 1, got {bwd_group_rows}")
  padded_rows = chunked_lib.round_up(num_tokens, max(block_n, bwd_block_n))
  vocab_chunk, padded_vocab = chunked_lib.vocab_chunking(
      vocab, padded_rows, bwd_block_v, itemsize, vocab_chunk)

  def pad_dim(a):
    multiple = max(block_k, bwd_block_k)
    return chunked_lib.pad_axis(a, chunked_lib.round_up(a.shape[1], multiple), axis=1)

  def forward(x, w, idx):
    x_pad = chunked_lib.pad_axis(pad_dim(x), padded_rows)
    lse = linear_lse(x_pad, pad_dim(w), vocab=vocab, block_n=block_n, block_v=block_v,
                     block_k=block_k, num_warps=num_warps, num_stages=num_stages,
                     num_splits=num_splits, interpret=interpret)[:num_tokens]
    rows = chunked_lib.gather_chunk_rows(num_neighbours, x.shape[1], itemsize)
    return lse, chunked_lib.gathered_logits(x, w, idx, chunk_size=rows)

  def dlogits(x_all, w_c, lse_all, g_all):
    return softmax_chunk(x_all, w_c, lse_all, g_all, block_n=bwd_block_n, block_v=bwd_block_v,
                         block_k=bwd_block_k, num_warps=bwd_num_warps,
                         num_stages=bwd_num_stages, group_rows=bwd_group_rows,
                         interpret=interpret)

  def backward(x, w, lse, g, idx, coef):
    dim = x.shape[1]
    pad_rows = lambda a: chunked_lib.pad_axis(a, padded_rows)
    dx, dw = chunked_lib.vocab_chunked_backward(
        pad_rows(pad_dim(x)), chunked_lib.pad_axis(pad_dim(w), padded_vocab), pad_rows(lse),
        pad_rows(g), pad_rows(idx), pad_rows(coef), vocab_chunk=vocab_chunk,
        dlogits_fn=dlogits)
    return dx[:num_tokens, :dim], dw[:vocab, :dim]

  return forward, backward
