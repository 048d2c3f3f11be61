"""mdd.models.denoiser: shapes over grid sizes, head/hidden contract, CFG null text, sizes,
and the PartitionSpec of every parameter of the B variant on a 2x2x2 mesh."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from mdd.models import denoiser as denoiser_lib
from mdd.utils import sharding

V = 50


def _model(**kw):
  kw = dict(dict(width=32, depth=2, num_heads=2, mlp_dim=48), **kw)
  return denoiser_lib.Denoiser(vocab_size=V, **kw)


def _inputs(batch=2, h=4, w=3, text_len=5, text_dim=8, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, V + 1, (batch, h, w)), jnp.int32)
  text = jnp.asarray(rng.normal(size=(batch, text_len, text_dim)), jnp.float32)
  mask = jnp.asarray(np.arange(text_len)[None] < np.array([[3], [5]])[:batch], bool)
  return tokens, text, mask, jnp.asarray(rng.random(batch), jnp.float32)


def _perturb_head(params):
  """The head and the conditioning output start at zero; randomise them so outputs depend on
  everything they should."""
  for i, name in enumerate(("head", "cond_out")):
    kernel = params[name]["kernel"]
    new = np.random.default_rng(9 + i).normal(size=kernel.value.shape) * 0.1
    params[name]["kernel"] = kernel.replace_boxed(jnp.asarray(new, jnp.float32))
  return params


def _init(model, seed):
  """`init_params` jitted: one compile instead of op-by-op initialisers."""
  return jax.jit(lambda rng: denoiser_lib.init_params(model, rng, text_dim=8))(
      jax.random.key(seed))


@pytest.fixture(scope="module")
def perturbed():
  """`_model()` and its initial parameters with the head and conditioning output randomised;
  shared by the tests that only read them."""
  model = _model()
  return model, _perturb_head(_init(model, 0))


def _check_head_contract(model, params, grids):
  """Logits and hidden states per token on each grid, and logits = hidden @ head."""
  apply = jax.jit(model.apply, static_argnames="return_hidden")
  for h, w in grids:
    tokens, text, mask, ratio = _inputs(h=h, w=w)
    logits = apply({"params": params}, tokens, text, mask, ratio)
    hidden = apply({"params": params}, tokens, text, mask, ratio, return_hidden=True)
    assert logits.shape == (2, h, w, V) and hidden.shape == (2, h, w, 32)
    head = denoiser_lib.head_weights(params)
    assert head.shape == (V, 32)
    np.testing.assert_allclose(logits, jnp.einsum("bhwd,vd->bhwv", hidden, head), rtol=1e-4,
                               atol=1e-5)
    # Neighbouring tokens (one patch when patch_size > 1) get their own logits.
    assert float(jnp.max(jnp.abs(logits[:, 0, 0] - logits[:, 0, 1]))) > 1e-4


def test_grid_sizes_aspect_ratios_and_hidden_head_contract(perturbed):
  model, params = perturbed
  _check_head_contract(model, params, [(4, 3), (2, 8)])


def test_conditioning_inputs_matter_and_null_text_ignores_text(perturbed):
  model, params = perturbed
  tokens, text, mask, ratio = _inputs()
  f = jax.jit(lambda *a, **k: model.apply({"params": params}, *a, **k))
  base = f(tokens, text, mask, ratio)
  other_text = text + 1.0
  assert float(jnp.max(jnp.abs(f(tokens, other_text, mask, ratio) - base))) > 1e-4
  assert float(jnp.max(jnp.abs(f(tokens, text, mask, ratio * 0.5) - base))) > 1e-4
  # Padded text positions are ignored.
  padded = text.at[0, 3:].set(50.0)
  np.testing.assert_allclose(f(tokens, padded, mask, ratio), base, rtol=1e-5, atol=1e-5)
  # Dropped rows only see the null embedding: text content and mask do not matter.
  drop = jnp.array([True, False])
  a = f(tokens, text, mask, ratio, drop_text=drop)
  b = f(tokens, other_text, jnp.ones_like(mask), ratio, drop_text=drop)
  np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(a[1] - b[1]))) > 1e-4
  np.testing.assert_allclose(a[1], base[1], rtol=1e-5, atol=1e-5)


def test_micro_conditions_and_bad_inputs():
  model = _model(num_micro_conds=2)
  params = _perturb_head(_init(model, 2))
  tokens, text, mask, ratio = _inputs()
  micro = jnp.asarray([[256.0, 1.0], [512.0, 0.5]])
  hidden = jax.jit(lambda m: model.apply({"params": params}, tokens, text, mask, ratio,
                                         micro_conds=m, return_hidden=True))
  h1, h2 = hidden(micro), hidden(micro[::-1])
  assert float(jnp.max(jnp.abs(h1[0] - h2[0]))) > 1e-4
  with pytest.raises(ValueError, match="micro_conds"):
    model.apply({"params": params}, tokens, text, mask, ratio)
  with pytest.raises(ValueError, match="tokens must be"):
    model.apply({"params": params}, tokens.reshape(2, -1), text, mask, ratio)
  with pytest.raises(ValueError, match="unknown denoiser variant"):
    denoiser_lib.decode_variant("XXL")


def _expected_count(v, width, depth, mlp, heads, text_dim):
  hd = width // heads
  per_block = 3 * width + 2 * (4 * width * width + 2 * hd) + 3 * width * mlp
  return (denoiser_lib.embedding_rows(v) * width + (256 * width + width) + (width * width + width)
          + text_dim * width + width + width + depth * per_block + width + width * v)


@pytest.mark.parametrize("variant", list(denoiser_lib.VARIANTS))
def test_variant_table_parameter_counts(variant):
  s = denoiser_lib.decode_variant(variant)
  count = denoiser_lib.param_count(variant, 16384, text_dim=384)
  assert count == _expected_count(16384, s.width, s.depth, s.mlp_dim, s.num_heads, 384)
  if variant == "mu":
    assert 1e6 < denoiser_lib.param_count("mu", 1024, text_dim=128) < 3e6


# Expected specs of the B variant under DEFAULT_RULES on a (data, fsdp, tensor) = 2x2x2 mesh.
_EXPECTED_B = [
    (r"token_embed/embedding", P("tensor", "fsdp")),
    (r"cond_in/kernel", P(None, "fsdp")),
    (r"cond_(in|out)/bias", P("fsdp")),
    (r"cond_out/kernel", P("tensor", "fsdp")),
    (r"text_proj/kernel", P(None, "fsdp")),
    (r"null_text", P(None, "fsdp")),
    (r"(text_norm|final_norm)/scale", P("fsdp")),
    (r"block_\d+/(self_attn|cross_attn|mlp)_norm/scale", P("fsdp")),
    (r"block_\d+/(self|cross)_attn/(query|key|value)/kernel", P("fsdp", "tensor", None)),
    (r"block_\d+/(self|cross)_attn/(query|key)_norm/scale", P(None)),
    (r"block_\d+/(self|cross)_attn/out/kernel", P("tensor", None, "fsdp")),
    (r"block_\d+/mlp/wi_(gate|up)/kernel", P("fsdp", "tensor")),
    (r"block_\d+/mlp/wo/kernel", P("tensor", "fsdp")),
    (r"head/kernel", P("fsdp", "tensor")),
]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_b_variant_partition_specs_on_2x2x2_mesh(scan_layers):
  model = denoiser_lib.Denoiser.from_variant("B", 16384, scan_layers=scan_layers)
  abstract = jax.eval_shape(lambda: denoiser_lib.init_params(model, jax.random.key(0),
                                                             text_dim=384))
  mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  shardings = sharding.logical_to_shardings(abstract, mesh, sharding.DEFAULT_RULES)
  flat = jax.tree_util.tree_flatten_with_path(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.NamedSharding))[0]
  assert len(flat) == len(jax.tree.leaves(nn.unbox(abstract)))
  seen = 0
  for path, s in flat:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    # Scanned blocks keep each weight's spec behind a replicated leading "layers" axis.
    stacked = scan_layers and name.startswith("blocks/")
    if stacked:
      name = name.replace("blocks/", "block_0/", 1)
    matches = [spec for pattern, spec in _EXPECTED_B if re.fullmatch(pattern, name)]
    assert len(matches) == 1, name
    expected = P(None, *matches[0]) if stacked else matches[0]
    assert s.spec == expected, (name, s.spec, expected)
    seen += 1
  assert seen == 10 + (1 if scan_layers else 12) * 18  # 10 top-level weights, 18 per block.


@pytest.mark.integration
def test_remat_gives_the_same_gradients():
  tokens, text, mask, ratio = _inputs()
  plain = _model()
  params = _perturb_head(denoiser_lib.init_params(plain, jax.random.key(3), text_dim=8))

  def grads(model):
    loss = lambda p: jnp.sum(model.apply({"params": p}, tokens, text, mask, ratio) ** 2)
    return jax.jit(jax.grad(loss))(params)

  g_plain, g_remat = grads(plain), grads(_model(remat=True))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               nn.unbox(g_plain), nn.unbox(g_remat))
  assert float(jnp.abs(nn.unbox(g_plain)["block_0"]["mlp"]["wo"]["kernel"]).max()) > 0


def _stack_blocks(params, depth):
  """The unscanned params with block_0..block_{depth-1} stacked into the scanned layout."""
  params = dict(nn.unbox(params))
  blocks = [params.pop(f"block_{i}") for i in range(depth)]
  params["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return params


@pytest.mark.integration
@pytest.mark.parametrize("remat", [False, True])
def test_scan_layers_is_the_same_function(remat):
  """Scanned blocks compute what the unrolled loop computes, forward and gradient, from the
  same weights stacked; and scanning really stacks them (one "blocks" entry, depth first)."""
  tokens, text, mask, ratio = _inputs()
  plain, scanned = _model(depth=3), _model(depth=3, scan_layers=True, remat=remat)
  params = _perturb_head(denoiser_lib.init_params(plain, jax.random.key(5), text_dim=8))
  stacked = _stack_blocks(params, 3)
  own = nn.unbox(denoiser_lib.init_params(scanned, jax.random.key(5), text_dim=8))
  assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, stacked)
  assert own["blocks"]["mlp"]["wo"]["kernel"].shape == (3, 48, 32)
  # Each scanned layer gets its own initial weights.
  assert not np.allclose(own["blocks"]["mlp"]["wo"]["kernel"][0],
                         own["blocks"]["mlp"]["wo"]["kernel"][1])

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, tokens, text, mask, ratio) ** 2)

  out_plain = plain.apply({"params": params}, tokens, text, mask, ratio)
  out_scanned = scanned.apply({"params": stacked}, tokens, text, mask, ratio)
  np.testing.assert_allclose(out_scanned, out_plain, rtol=1e-5, atol=1e-5)
  g_plain = _stack_blocks(jax.jit(jax.grad(lambda p: loss(plain, p)))(params), 3)
  g_scanned = jax.jit(jax.grad(lambda p: loss(scanned, p)))(stacked)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_scanned, g_plain)
  assert float(jnp.abs(g_scanned["blocks"]["mlp"]["wo"]["kernel"][0]).max()) > 0


@pytest.mark.integration
def test_unrolled_init_through_the_scan_matches_a_direct_init():
  """`init_params` draws an unrolled model's blocks through the scanned layout: the same tree,
  shapes and logical names as `model.init`, the same distributions, independent blocks."""
  model = _model(depth=3, width=64, mlp_dim=256)
  tokens, text, mask, ratio = _inputs()
  boxed = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
  direct = model.init(jax.random.key(1), tokens, text, mask, ratio)["params"]
  ours = denoiser_lib.init_params(model, jax.random.key(1), text_dim=8)
  assert (jax.tree.structure(direct, is_leaf=boxed) == jax.tree.structure(ours, is_leaf=boxed))
  for a, b in zip(jax.tree.leaves(direct, is_leaf=boxed), jax.tree.leaves(ours, is_leaf=boxed)):
    assert a.names == b.names and a.value.shape == b.value.shape
  for name in ("wi_gate", "wo"):
    kernels = [np.asarray(ours[f"block_{i}"]["mlp"][name]["kernel"].value) for i in range(3)]
    reference = np.asarray(direct["block_0"]["mlp"][name]["kernel"].value)
    for k in kernels:
      assert abs(k.std() / reference.std() - 1) < 0.1
    assert not np.allclose(kernels[0], kernels[1])


def test_token_embedding_gradient_is_a_float32_scatter():
  """The bfloat16 model gathers token embeddings from the float32 table, so the embedding
  gradient is a float32 scatter-add (a bfloat16 one dominated the H200 step time)."""
  tokens, text, mask, ratio = _inputs()
  model = _model(dtype=jnp.bfloat16)
  # Lowering needs only the parameters' shapes.
  params = jax.eval_shape(lambda: denoiser_lib.init_params(model, jax.random.key(0), text_dim=8))
  loss = lambda p: jnp.sum(model.apply({"params": p}, tokens, text, mask, ratio,
                                       return_hidden=True).astype(jnp.float32) ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
  scatters = re.findall(r'"stablehlo.scatter".*?-> tensor<([0-9x]+)x(\w+)>', hlo, re.S)
  assert scatters, "no embedding scatter found"
  assert {dtype for _, dtype in scatters} == {"f32"}, scatters


def test_variant_shape_overrides():
  model = denoiser_lib.Denoiser.from_variant("mu", 64, depth=6, width=0, mlp_dim=256)
  assert (model.width, model.depth, model.num_heads, model.mlp_dim) == (128, 6, 4, 256)
  params = jax.eval_shape(lambda: denoiser_lib.init_params(model, jax.random.key(0), text_dim=8))
  assert sorted(k for k in params if k.startswith("block_")) == [f"block_{i}" for i in range(6)]


def test_patchify_groups_squares_and_unpatchify_inverts_it():
  h, w, p, d = 4, 6, 2, 3
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, h * w, d)), jnp.float32)
  patches = denoiser_lib._patchify(x, h, w, p)
  assert patches.shape == (2, (h // p) * (w // p), p * p * d)
  grid = np.asarray(x).reshape(2, h, w, d)
  # Position (1, 2) of the 2 x 3 patch grid holds tokens rows 2..3, cols 4..5, row-major.
  expected = grid[:, 2:4, 4:6].reshape(2, p * p * d)
  np.testing.assert_array_equal(patches[:, 1 * (w // p) + 2], expected)
  np.testing.assert_array_equal(denoiser_lib._unpatchify(patches, h, w, p), x)


@pytest.mark.integration
def test_patch_size_keeps_the_per_token_contract_and_trains():
  model = _model(patch_size=2)
  params = _perturb_head(denoiser_lib.init_params(model, jax.random.key(3), text_dim=8))
  assert {"patch_in", "patch_out"} <= set(params)
  assert "patch_in" not in denoiser_lib.init_params(_model(), jax.random.key(3), text_dim=8)
  _check_head_contract(model, params, [(4, 4), (2, 6)])
  with pytest.raises(ValueError, match="not divisible by patch_size 2"):
    model.apply({"params": params}, *_inputs(h=4, w=3))
  # Every parameter gets a gradient, the patch projections included.
  tokens, text, mask, ratio = _inputs(h=4, w=4)
  loss = lambda prm: jnp.mean(model.apply({"params": prm}, tokens, text, mask, ratio) ** 2)
  grads = jax.grad(loss)(nn.unbox(params))
  for name in ("patch_in", "patch_out", "token_embed", "block_0"):
    norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads[name]))
    assert norm > 0, name
