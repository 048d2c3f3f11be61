"""`fused_gce`: Grouped Cross-Entropy with a custom VJP, dispatching to XLA, chunked or Pallas.

GCE (docs/architecture.md): with z = x w^T, group G = nbr[y] and normalised weights q,
  soft:      L = LSE(z) - sum_k q_k z_{G_k}
  marginal:  L = LSE(z) - LSE_k(z_{G_k} + log q_k)
  loss = (1 - ce_mix) L + ce_mix (LSE(z) - z_y).

Both modes are "LSE over V" minus a function of K+1 gathered logits (the group and the label),
so the fused paths compute the LSE with a kernel (or row chunks), the small target term with
plain JAX, and in the backward pass build `dZ = g softmax(z) - target` one bounded block at a
time (row chunks for `chunked`, vocabulary blocks for the kernels; see `chunked.py`). Nothing of
size N x V is ever live for the fused paths.

Conventions (identical in `reference.py`):
- neighbour entries `< 0` are padding: weight 0 whatever `neighbour_weights` holds there;
- weights are normalised per row; a row whose weights sum to 0 falls back to plain CE on its
  label, so a missing or all-zero table row never yields NaN or a silent zero loss;
- rows with `valid[n] == False` or `labels[n] < 0` give loss 0 and exactly zero gradient;
- `x` and `w` are cast to their common dtype (bf16 stays bf16); logits accumulate in float32 and
  the max / sum / LSE are float32; the loss is float32 [N]; float32 operands use full fp32
  matmuls (no TF32); the backward's dZ operands are in the input dtype (bf16 for bf16 inputs);
- neighbour indices must lie in [0, V) or be negative (padding); under jit they cannot be
  checked, and an entry >= V makes that row's loss NaN (JAX's gather fill), never silent.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.gce import chunked as chunked_lib

IMPLS = ("auto", "xla", "chunked", "pallas_gpu", "pallas_tpu")
MODES = ("soft", "marginal")

# Block-size keyword arguments each implementation accepts (validated, all static).
_BLOCK_KEYS = {
    "xla": (),
    "chunked": ("chunk_size",),
    "pallas_gpu": ("block_n", "block_v", "block_k", "num_warps", "num_stages", "num_splits",
                   "bwd_block_n", "bwd_block_v", "bwd_block_k", "bwd_num_warps",
                   "bwd_num_stages", "bwd_group_rows", "vocab_chunk"),
    "pallas_tpu": ("block_n", "block_v", "vocab_chunk", "vmem_limit_bytes"),
}
_DEFAULT_CHUNK = 1 << 28  # chunk rows ~ this many logits (x4 bytes in f32) per step.


def resolve_impl(impl: str, interpret: bool = False) -> str:
  """Maps `auto` to the Pallas kernel of the default backend, or `chunked` on CPU."""
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "gpu" or backend == "cuda":
    return "pallas_gpu"
  if backend == "tpu":
    return "pallas_tpu"
  return "chunked"


def default_chunk_size(vocab: int) -> int:
  return max(8, _DEFAULT_CHUNK // max(vocab, 1) // 8 * 8)


def _group_inputs(labels, neighbours, neighbour_weights, valid):
  """Gathered indices [N, K+1] (group then label), normalised q [N, K], fallback, row mask."""
  row_ok = labels >= 0
  if valid is not None:
    row_ok = row_ok & valid.astype(bool)
  safe_labels = jnp.where(row_ok, labels, 0).astype(jnp.int32)
  group = jnp.take(neighbours, safe_labels, axis=0).astype(jnp.int32)         # [N, K]
  # The weights are data (a fixed table), not parameters: no gradient flows into them.
  group_w = jax.lax.stop_gradient(
      jnp.take(neighbour_weights, safe_labels, axis=0).astype(jnp.float32))
  group_w = jnp.where(group >= 0, group_w, 0.0)
  total = jnp.sum(group_w, axis=1)
  fallback = total <= 0.0
  q = group_w / jnp.where(fallback, 1.0, total)[:, None]
  idx = jnp.concatenate([jnp.where(group >= 0, group, 0), safe_labels[:, None]], axis=1)
  return idx, q, fallback, row_ok


def _target_term(gathered, q, fallback, *, mode: str, ce_mix: float):
  """(1 - ce_mix) * group term + ce_mix * z_y from the gathered logits [N, K+1] (float32)."""
  group_logits, label_logit = gathered[:, :-1], gathered[:, -1]
  if mode == "soft":
    group_term = jnp.sum(q * group_logits, axis=1)
  else:
    positive = q > 0
    scores = jnp.where(positive, group_logits + jnp.log(jnp.where(positive, q, 1.0)),
                       chunked_lib.NEG_INF)
    # Fallback rows have no positive weight; give them finite scores so the unused branch
    # of the `where` below cannot produce NaN gradients.
    scores = jnp.where(fallback[:, None], 0.0, scores)
    group_term = jax.nn.logsumexp(scores, axis=1)
  group_term = jnp.where(fallback, label_logit, group_term)
  return (1.0 - ce_mix) * group_term + ce_mix * label_logit


# ------------------------------------------------------------------------------------------------
# impl="xla": materialised logits, plain autodiff (the fast path for small V, and a test twin).


def _gce_xla(x, w, idx, q, fallback, row_ok, *, mode, ce_mix):
  logits = jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())),
                               precision=chunked_lib.matmul_precision(x.dtype),
                               preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=1)
  gathered = jnp.take_along_axis(logits, idx, axis=1)
  return _row_loss(lse, gathered, q, fallback, row_ok, mode=mode, ce_mix=ce_mix)


# ------------------------------------------------------------------------------------------------
# Fused paths: one custom VJP, backends plug in `forward` and `dlogits`.


def _backend(impl: str, interpret: bool, blocks: dict[str, Any], x, w, idx):
  """Returns (forward(x, w, idx) -> (lse, gathered), backward(...) -> (dx, dw))."""
  num_tokens, vocab = x.shape[0], w.shape[0]
  if impl == "chunked":
    chunk_size = blocks.get("chunk_size") or default_chunk_size(vocab)
    forward = functools.partial(chunked_lib.chunked_forward, chunk_size=chunk_size)
    backward = functools.partial(chunked_lib.chunked_backward, chunk_size=chunk_size)
    return forward, backward
  if impl == "pallas_gpu":
    from pallas_kernels.gce import gpu  # pylint: disable=g-import-not-at-top
    make_backend = gpu.make_backend
  else:
    from pallas_kernels.gce import tpu  # pylint: disable=g-import-not-at-top
    make_backend = tpu.make_backend
  return make_backend(interpret=interpret, num_tokens=num_tokens, vocab=vocab,
                      itemsize=x.dtype.itemsize, num_neighbours=idx.shape[1], **blocks)


def _row_loss(lse, gathered, q, fallback, row_ok, *, mode, ce_mix):
  """Per-row loss from the LSE over V and the K+1 gathered logits (0 on ignored rows)."""
  target = _target_term(gathered, q, fallback, mode=mode, ce_mix=ce_mix)
  return jnp.where(row_ok, lse - target, 0.0)


def _target_coefficients(gathered, q, fallback, row_ok, loss_cotangent, *, mode, ce_mix):
  """(row cotangent [N] float32, 0 on ignored rows; d loss / d gathered logits [N, K+1]): what
  the backends scatter into dZ = g softmax(z) - target."""
  row_cotangent = jnp.where(row_ok, loss_cotangent, 0.0).astype(jnp.float32)
  _, target_vjp = jax.vjp(
      functools.partial(_target_term, q=q, fallback=fallback, mode=mode, ce_mix=ce_mix),
      gathered)
  (target_coef,) = target_vjp(row_cotangent)
  return row_cotangent, target_coef


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _gce_fused(x, w, idx, q, fallback, row_ok, config):
  loss, _ = _gce_fused_fwd(x, w, idx, q, fallback, row_ok, config)
  return loss


def _gce_fused_fwd(x, w, idx, q, fallback, row_ok, config):
  impl, mode, ce_mix, interpret, blocks = config
  forward, _ = _backend(impl, interpret, dict(blocks), x, w, idx)
  lse, gathered = forward(x, w, idx)
  loss = _row_loss(lse, gathered, q, fallback, row_ok, mode=mode, ce_mix=ce_mix)
  return loss, (x, w, idx, q, fallback, row_ok, lse, gathered)


def _gce_fused_bwd(config, residuals, loss_cotangent):
  impl, mode, ce_mix, interpret, blocks = config
  x, w, idx, q, fallback, row_ok, lse, gathered = residuals
  row_cotangent, target_coef = _target_coefficients(
      gathered, q, fallback, row_ok, loss_cotangent, mode=mode, ce_mix=ce_mix)
  _, backward = _backend(impl, interpret, dict(blocks), x, w, idx)
  dx, dw = backward(x, w, lse, row_cotangent, idx, target_coef)
  return dx, dw, None, None, None, None


_gce_fused.defvjp(_gce_fused_fwd, _gce_fused_bwd)


def _check_inputs(x, w, labels, neighbours, neighbour_weights, valid, mode, ce_mix):
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if not 0.0 <= float(ce_mix) <= 1.0:
    raise ValueError(f"ce_mix must lie in [0, 1], got {ce_mix}")
  if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
    raise ValueError(f"x must be [N, D] and w [V, D] with the same D, got {x.shape}, {w.shape}")
  if labels.shape != (x.shape[0],):
    raise ValueError(f"labels must be [N]={x.shape[0]}, got {labels.shape}")
  if neighbours.ndim != 2 or neighbours.shape[0] != w.shape[0]:
    raise ValueError(f"neighbours must be [V, K] with V={w.shape[0]}, got {neighbours.shape}")
  if neighbour_weights.shape != neighbours.shape:
    raise ValueError(f"neighbour_weights must match neighbours {neighbours.shape}, "
                     f"got {neighbour_weights.shape}")
  if valid is not None and valid.shape != (x.shape[0],):
    raise ValueError(f"valid must be [N]={x.shape[0]}, got {valid.shape}")
  for name, a in (("labels", labels), ("neighbours", neighbours)):
    if not jnp.issubdtype(a.dtype, jnp.integer):
      raise ValueError(f"{name} must be an integer array, got {a.dtype}")


@functools.partial(jax.jit, static_argnames=("mode", "ce_mix", "impl", "interpret", "blocks"))
def _fused_gce_jit(x, w, labels, neighbours, neighbour_weights, valid, *, mode, ce_mix, impl,
                   interpret, blocks):
  compute_dtype = jnp.promote_types(x.dtype, w.dtype)
  x = x.astype(compute_dtype)
  w = w.astype(compute_dtype)
  idx, q, fallback, row_ok = _group_inputs(labels, neighbours, neighbour_weights, valid)
  if impl == "xla":
    return _gce_xla(x, w, idx, q, fallback, row_ok, mode=mode, ce_mix=ce_mix)
  config = (impl, mode, ce_mix, interpret, blocks)
  return _gce_fused(x, w, idx, q, fallback, row_ok, config)


def fused_gce(x: jax.Array, w: jax.Array, labels: jax.Array, neighbours: jax.Array,
              neighbour_weights: jax.Array, *, mode: str = "soft", ce_mix: float = 0.0,
              valid: jax.Array | None = None, impl: str = "auto", interpret: bool = False,
              **block_sizes) -> jax.Array:
  """Per-token Grouped Cross-Entropy, float32 [N], differentiable in `x` and `w`.

  Args:
    x: hidden states [N, D] (bf16 or f32).
    w: classifier / head weights [V, D].
    labels: int [N]; negative labels mark rows to ignore (loss 0, no gradient).
    neighbours: int [V, K]; row v lists the group of code v (first entry v), -1 pads.
    neighbour_weights: [V, K] non-negative; normalised per row; all-zero rows -> plain CE.
    mode: "soft" (-sum q log p) or "marginal" (-log sum q p).
    ce_mix: weight of plain CE mixed in, in [0, 1].
    valid: optional bool [N]; False rows give loss 0 and no gradient.
    impl: "auto" | "xla" | "chunked" | "pallas_gpu" | "pallas_tpu" ("auto": the Pallas kernel of
      the default backend, "chunked" on CPU).
    interpret: run the Pallas kernels in interpret mode (CPU tests).
    **block_sizes: static tuning knobs of the chosen impl: chunked: chunk_size;
      pallas_gpu: block_n, block_v, block_k, num_warps, num_stages, num_splits, bwd_block_n,
      bwd_block_v, bwd_block_k, bwd_num_warps, bwd_num_stages, bwd_group_rows, vocab_chunk; pallas_tpu: block_n, block_v,
      vocab_chunk, vmem_limit_bytes. Backward extra memory: chunked ~ chunk_size x V x 6
      bytes (f32 logits + dZ rows) + V x D x 4 (f32 dw); Pallas ~ N x vocab_chunk x operand
      bytes (default ~1 GiB of dZ) + N x D x 4 (f32 dx).

  Returns:
    loss [N] float32.
  """
  impl = resolve_impl(impl, interpret)
  x, w = jnp.asarray(x), jnp.asarray(w)
  labels, neighbours = jnp.asarray(labels), jnp.asarray(neighbours)
  neighbour_weights = jnp.asarray(neighbour_weights)
  valid = None if valid is None else jnp.asarray(valid)
  _check_inputs(x, w, labels, neighbours, neighbour_weights, valid, mode, ce_mix)
  unknown = set(block_sizes) - set(_BLOCK_KEYS[impl])
  if unknown:
    raise ValueError(f"impl={impl!r} accepts block sizes {_BLOCK_KEYS[impl]}, "
                     f"got unknown {sorted(unknown)}")
  blocks = tuple(sorted((k, v) for k, v in block_sizes.items() if v is not None))
  return _fused_gce_jit(x, w, labels, neighbours, neighbour_weights, valid, mode=mode,
                        ce_mix=float(ce_mix), impl=impl, interpret=bool(interpret),
                        blocks=blocks)
