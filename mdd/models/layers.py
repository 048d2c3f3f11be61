"""Transformer building blocks shared by the denoiser and the trainable text encoder.

Every weight is created through `nn.with_logical_partitioning` with logical axis names
(`embed, mlp, heads, kv, vocab`), and activations are constrained with their own names
(`act_batch, act_len, act_embed, act_heads, act_vocab`); `mdd/utils/sharding.py` maps both onto the
mesh. Outside a mesh the constraints are no-ops, so the same modules run on one CPU.

Precision: parameters live in `param_dtype` (fp32 master weights), matmuls run in `dtype`
(bf16 on accelerators); norms, softmax statistics and RoPE angles are computed in fp32.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdd.utils import sharding

Dtype = Any

# Scaled-down init keeps residual streams of deep stacks O(1) at initialisation.
_DEFAULT_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint on an activation (no-op outside `sharding.mesh_context`)."""
  return sharding.constrain(x, tuple(names))


class Embed(nn.Embed):
  """`nn.Embed` that gathers from the `param_dtype` table and casts to `dtype` after the gather.

  The gradient is then a `param_dtype` (float32) scatter-add: `nn.Embed` casts the table first,
  and XLA GPU runs the resulting bfloat16 scatter-add slowly (87% of the H200's `S` denoiser
  step, docs/benchmarks.md) and sums frequent codes' updates in bfloat16.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"Embed needs integer ids, got {inputs.dtype}")
    # The feature dim is gathered first (FSDP's all-gather of a weight before use; the rows keep
    # whatever split the table has), so the looked-up rows come out split by the batch like the
    # ids, not by the features (a reshard XLA can only do by replicating the whole lookup).
    table = constrain(self.embedding, (sharding.UNCONSTRAINED, None))
    return jnp.take(table, inputs, axis=0).astype(self.dtype)


def dense(features, *, axis=-1, names: Sequence[str | None], dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, use_bias: bool = False, name: str | None = None,
          kernel_init=_DEFAULT_INIT) -> nn.DenseGeneral:
  """A `DenseGeneral` whose kernel carries logical axis `names` (one per kernel dim)."""
  bias_names = tuple(names[-(len(features) if isinstance(features, (tuple, list)) else 1):])
  return nn.DenseGeneral(
      features=features, axis=axis, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(names)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, bias_names),
      name=name)


class RMSNorm(nn.Module):
  """Root-mean-square norm with a learned scale (statistics in fp32)."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scale_name: str | None = "embed"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.scale_name,)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


class SwiGLU(nn.Module):
  """Gated MLP: wo(silu(x wg) * (x wu))."""
  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gate = dense(self.hidden_dim, names=("embed", "mlp"), name="wi_gate", **kw)(x)
    up = dense(self.hidden_dim, names=("embed", "mlp"), name="wi_up", **kw)(x)
    # The hidden is left unconstrained: it inherits the `mlp` (tensor) sharding of the kernels.
    h = nn.silu(gate) * up
    return dense(x.shape[-1], names=("mlp", "embed"), name="wo", **kw)(h)


def grid_positions(height: int, width: int) -> jax.Array:
  """Integer (row, col) coordinates of a row-major `height x width` grid: [height*width, 2]."""
  rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1).astype(jnp.float32)


def _rope_1d(x: jax.Array, positions: jax.Array, max_wavelength: float) -> jax.Array:
  """Rotary embedding of `x [B, L, N, d]` by scalar `positions [L]` or `[B, L]` (fp32)."""
  d = x.shape[-1]
  inv_freq = max_wavelength ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)  # [d/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [(B,) L, d/2]
  if angles.ndim == 2:
    angles = angles[None]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope_2d(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0):
  """2-D RoPE: the first half of each head rotates with the row, the second with the column.

  Relative offsets along both axes are what attention sees, so one model serves any grid size
  and aspect ratio. `x [B, L, N, H]` with H divisible by 4; `positions [L, 2]` or `[B, L, 2]`.
  """
  head_dim = x.shape[-1]
  if head_dim % 4:
    raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
  half = head_dim // 2
  rows = _rope_1d(x[..., :half], positions[..., 0], max_wavelength)
  cols = _rope_1d(x[..., half:], positions[..., 1], max_wavelength)
  return jnp.concatenate([rows, cols], axis=-1)


class Attention(nn.Module):
  """Multi-head attention (self- or cross-) through `jax.nn.dot_product_attention`.

  `implementation` is passed through (None = XLA default, "cudnn" = cuDNN flash on GPU).
  RMS-normalised queries/keys (`qk_norm`) keep logits bounded in bf16 at large widths.
  """
  num_heads: int
  head_dim: int
  qk_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               positions: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    """x [B, L, D]; context [B, S, Dc] (None = self-attention); context_mask [B, S] bool."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = (self.num_heads, self.head_dim)
    kv_input = x if context is None else context
    q = dense(heads, names=("embed", "heads", "kv"), name="query", **kw)(x)
    k = dense(heads, names=("embed", "heads", "kv"), name="key", **kw)(kv_input)
    v = dense(heads, names=("embed", "heads", "kv"), name="value", **kw)(kv_input)
    if self.qk_norm:
      q = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, scale_name="kv",
                  name="query_norm")(q)
      k = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, scale_name="kv",
                  name="key_norm")(k)
    if positions is not None:
      if context is not None:
        raise ValueError("RoPE positions are only defined for self-attention")
      q = apply_rope_2d(q, positions)
      k = apply_rope_2d(k, positions)
    names = ("act_batch", "act_len", "act_heads", None)
    q, k, v = constrain(q, names), constrain(k, names), constrain(v, names)
    mask = None
    if context_mask is not None:
      mask = context_mask[:, None, None, :].astype(bool)  # [B, 1, 1, S]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
    out = constrain(out, names)
    return dense(x.shape[-1], axis=(-2, -1), names=("heads", "kv", "embed"), name="out",
                 **kw)(out)


def sinusoidal_embedding(values: jax.Array, dim: int, max_period: float = 10_000.0):
  """Fixed sin/cos features of scalars `values [B]` -> [B, dim] (fp32)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = values.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TransformerBlock(nn.Module):
  """Pre-norm block: self-attention (+2-D RoPE), optional cross-attention, SwiGLU MLP."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  cross_attention: bool = False
  qk_norm: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x, positions=None, context=None, context_mask=None, self_mask=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn_kw = dict(num_heads=self.num_heads, head_dim=self.head_dim, qk_norm=self.qk_norm,
                   implementation=self.attention_impl, **kw)
    h = RMSNorm(name="self_attn_norm", **kw)(x)
    x = x + Attention(name="self_attn", **attn_kw)(h, positions=positions,
                                                   context_mask=self_mask)
    if self.cross_attention:
      # cuDNN's fused attention rejects the text's key length (measured on an H200 with jax
      # 0.11.2: "Unsupported sequence length Q 256, KV 65"); the text is short, so XLA's.
      cross_kw = dict(attn_kw, implementation=None if self.attention_impl == "cudnn"
                      else self.attention_impl)
      h = RMSNorm(name="cross_attn_norm", **kw)(x)
      x = x + Attention(name="cross_attn", **cross_kw)(h, context=context,
                                                       context_mask=context_mask)
    h = RMSNorm(name="mlp_norm", **kw)(x)
    x = x + SwiGLU(self.mlp_dim, name="mlp", **kw)(h)
    return constrain(x, ("act_batch", "act_len", "act_embed"))
