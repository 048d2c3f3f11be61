"""mdd.models.layers: norms, SwiGLU, attention vs a NumPy reference, 2-D RoPE, logical names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd.models import layers
import sampling_fixtures


def test_rmsnorm_matches_numpy():
  x = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32) * 3
  norm = layers.RMSNorm()
  params = norm.init(jax.random.key(0), x)
  scale = np.random.default_rng(1).normal(size=8).astype(np.float32)
  params = {"params": {"scale": nn.LogicallyPartitioned(jnp.asarray(scale), ("embed",))}}
  out = norm.apply(params, x)
  expect = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


def test_swiglu_matches_numpy_and_has_logical_names():
  x = np.random.default_rng(2).normal(size=(2, 3, 8)).astype(np.float32)
  mlp = layers.SwiGLU(hidden_dim=12)
  params = mlp.init(jax.random.key(1), x)["params"]
  assert params["wi_gate"]["kernel"].names == ("embed", "mlp")
  assert params["wo"]["kernel"].names == ("mlp", "embed")
  p = nn.unbox(params)
  gate = x @ np.asarray(p["wi_gate"]["kernel"])
  up = x @ np.asarray(p["wi_up"]["kernel"])
  expect = (gate / (1 + np.exp(-gate)) * up) @ np.asarray(p["wo"]["kernel"])
  np.testing.assert_allclose(mlp.apply({"params": params}, x), expect, rtol=1e-4, atol=1e-5)


def _naive_attention(q, k, v, mask=None):
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    scores = np.where(mask[:, None, None, :], scores, -1e30)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


def test_cross_attention_matches_reference_with_key_mask():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  ctx = rng.normal(size=(2, 5, 16)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  attn = layers.Attention(num_heads=2, head_dim=8, qk_norm=False)
  params = attn.init(jax.random.key(2), x, context=ctx, context_mask=mask)["params"]
  assert params["query"]["kernel"].names == ("embed", "heads", "kv")
  assert params["out"]["kernel"].names == ("heads", "kv", "embed")
  p = jax.tree.map(np.asarray, nn.unbox(params))
  q = np.einsum("bld,dhk->blhk", x, p["query"]["kernel"])
  k = np.einsum("bld,dhk->blhk", ctx, p["key"]["kernel"])
  v = np.einsum("bld,dhk->blhk", ctx, p["value"]["kernel"])
  expect = np.einsum("blhk,hkd->bld", _naive_attention(q, k, v, mask), p["out"]["kernel"])
  out = attn.apply({"params": params}, x, context=ctx, context_mask=mask)
  np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
  # Masked keys do not matter.
  ctx2 = ctx.copy()
  ctx2[0, 3:] = 100.0
  ctx2[1, 1:] = -7.0
  np.testing.assert_allclose(attn.apply({"params": params}, x, context=ctx2, context_mask=mask),
                             out, rtol=1e-5, atol=1e-5)


def test_rope_2d_is_relative_in_both_axes():
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

  def score(pq, pk):
    rq = layers.apply_rope_2d(q, jnp.asarray([pq], jnp.float32))
    rk = layers.apply_rope_2d(k, jnp.asarray([pk], jnp.float32))
    return float(jnp.sum(rq * rk))

  base = score((2, 3), (5, 1))
  assert abs(score((12, -4), (15, -6)) - base) < 1e-4  # Same (row, col) offset.
  assert abs(score((2, 3), (5, 2)) - base) > 1e-3  # Column offset changes it ...
  assert abs(score((3, 3), (5, 1)) - base) > 1e-3  # ... and so does the row offset.
  # Rotation keeps the norm.
  pos = layers.grid_positions(3, 4)
  x = jnp.asarray(rng.normal(size=(2, 12, 3, 8)), jnp.float32)
  np.testing.assert_allclose(jnp.linalg.norm(layers.apply_rope_2d(x, pos), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  np.testing.assert_array_equal(pos[5], [1, 1])
  with pytest.raises(ValueError, match="divisible by 4"):
    layers.apply_rope_2d(jnp.zeros((1, 2, 1, 6)), jnp.zeros((2, 2)))


def test_transformer_block_runs_in_bf16_close_to_fp32():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 12, 32)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 4, 32)), jnp.float32)
  mask = jnp.ones((2, 4), bool)
  pos = layers.grid_positions(3, 4)
  f32 = layers.TransformerBlock(num_heads=2, head_dim=16, mlp_dim=64, cross_attention=True)
  # NumPy-drawn weights of the init's shapes and logical names: no init program to run.
  params = sampling_fixtures.random_init(f32, x, pos, ctx, mask)
  out32 = jax.jit(f32.apply)({"params": params}, x, pos, ctx, mask)
  bf16 = f32.clone(dtype=jnp.bfloat16)
  out16 = jax.jit(bf16.apply)({"params": params}, x.astype(jnp.bfloat16), pos, ctx, mask)
  assert out16.dtype == jnp.bfloat16
  rel = jnp.linalg.norm(out16.astype(jnp.float32) - out32) / jnp.linalg.norm(out32)
  assert float(rel) < 2e-2
  # Every weight carries logical names from the allowed set.
  allowed = {"embed", "mlp", "heads", "kv", "vocab", None}
  for leaf in jax.tree.leaves(params, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned)):
    assert isinstance(leaf, nn.LogicallyPartitioned)
    assert set(leaf.names) <= allowed
