"""Tokenizer model: shapes for f = 4/8/16 and several sizes, logical names, config, GAN pieces."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd import defaults
from mdd import workdir as workdir_lib
from mdd.models import discriminator as disc_lib
from mdd.models import tokenizer as tokenizer_lib
from mdd.objectives import tokenizer_losses
import sampling_fixtures


def _micro(f, quantizer="vq", attention=False):
  return tokenizer_lib.Tokenizer(channels=tokenizer_lib.variant_channels("micro", f),
                                 z_channels=16, attention=attention, quantizer=quantizer,
                                 vocab_size=96, code_dim=8, fsq_levels=(4, 3, 3),
                                 lookup_block_size=40)


def _uniform(seed, shape):
  """Float images in [-1, 1) drawn with NumPy (an eager jax.random draw compiles a sampler per
  shape, seconds each on CPU)."""
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


@pytest.mark.parametrize("f,height,width,attention", [
    (4, 16, 24, True), (8, 24, 16, False), (16, 32, 16, True)])
def test_encode_decode_shapes(f, height, width, attention):
  """Ids of the right shape and range; decode(ids) is the forward's reconstruction; uint8 and
  float inputs give the same ids.

  The model's own init (its zero-initialised residual branches keep the straight-through
  rounding small enough for atol 1e-5), jitted with an "rbg" key, which compiles in a third of
  the time of the default sampler; the applies in one jitted function."""
  model = _micro(f, attention=attention)
  images = jnp.asarray(np.random.default_rng(f + height).integers(0, 256, (2, height, width, 3)),
                       jnp.uint8)
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)["params"]

  @jax.jit
  def run(params, images):
    reconstruction, aux = model.apply({"params": params}, images)
    decoded = model.apply({"params": params}, aux["ids"], method="decode")
    floats = images.astype(jnp.float32) / 127.5 - 1
    return reconstruction, aux["ids"], decoded, model.apply({"params": params}, floats,
                                                            method="encode")

  reconstruction, ids, decoded, float_ids = run(params, images)
  assert ids.shape == (2, height // f, width // f) and ids.dtype == jnp.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < 96
  assert decoded.shape == (2, height, width, 3) and decoded.dtype == jnp.float32
  np.testing.assert_allclose(reconstruction, decoded, atol=1e-5)
  # uint8 and the equivalent float input give the same tokens.
  np.testing.assert_array_equal(float_ids, ids)
  assert model.downsample_factor == f


@pytest.mark.parametrize("f", [4, 8, 16])
def test_shapes_for_each_factor_without_running(f):
  """eval_shape: output shapes for every factor at square and non-square sizes (no compute)."""
  model = _micro(f, attention=True)
  for height, width in ((32, 32), (64, 32), (16 * 3, 16 * 5)):
    images = jax.ShapeDtypeStruct((3, height, width, 3), jnp.uint8)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    ids = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode"), params,
                         images)
    assert ids.shape == (3, height // f, width // f) and ids.dtype == jnp.int32
    decoded = jax.eval_shape(lambda p, i: model.apply({"params": p}, i, method="decode"),
                             params, ids)
    assert decoded.shape == (3, height, width, 3)


def test_fsq_tokenizer_and_codebook():
  model = _micro(4, quantizer="fsq")
  images = _uniform(1, (1, 8, 8, 3))
  params = sampling_fixtures.random_init(model, images)
  ids = model.apply({"params": params}, images, method="encode")
  assert ids.shape == (1, 2, 2) and int(ids.max()) < 36 and model.num_codes == 36
  assert model.apply({"params": params}, method="codebook").shape == (36, 3)


def test_bad_inputs_raise_clear_errors():
  model = _micro(8)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  encode = lambda x: model.apply({"params": params}, x, method="encode")
  with pytest.raises(ValueError, match="divisible"):
    jax.eval_shape(encode, jax.ShapeDtypeStruct((1, 20, 16, 3), jnp.float32))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    jax.eval_shape(encode, jax.ShapeDtypeStruct((16, 16, 3), jnp.float32))
  with pytest.raises(ValueError, match="variant"):
    tokenizer_lib.variant_channels("XXL", 8)
  with pytest.raises(ValueError, match="downsample_factor"):
    tokenizer_lib.variant_channels("tiny", 32)


def test_weights_carry_logical_names():
  model = _micro(4)
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  specs = nn.get_partition_spec(boxed)
  assert specs["quant"]["codebook"] == jax.sharding.PartitionSpec("codebook", None)
  assert specs["encoder"]["conv_in"]["kernel"] == jax.sharding.PartitionSpec(
      None, None, "conv_in", "conv_out")
  assert specs["decoder"]["conv_out"]["kernel"] == jax.sharding.PartitionSpec(
      None, None, "conv_in", "conv_out")
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)


def test_tokenizer_from_config_and_sizes():
  cfg = defaults.tokenizer_config()
  model = tokenizer_lib.tokenizer_from_config(cfg)
  assert model.downsample_factor == 4 and model.num_codes == 1024
  assert tuple(model.channels) == tokenizer_lib.variant_channels("tiny", 4)
  big = defaults.tokenizer_config("B_v18")
  model = tokenizer_lib.tokenizer_from_config(big)
  assert model.num_codes == 2 ** 18 and model.downsample_factor == 16
  cfg.model.dtype = "float16"
  with pytest.raises(ValueError, match="dtype"):
    tokenizer_lib.tokenizer_from_config(cfg)
  with pytest.raises(ValueError, match="unknown tokenizer size"):
    defaults.tokenizer_config("huge")


def test_load_tokenizer_missing_dir_is_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained tokenizer"):
    workdir_lib.Workdir(str(tmp_path)).load_tokenizer()


def test_patch_discriminator_and_hinge_losses():
  disc = disc_lib.PatchDiscriminator(width=8, num_layers=2)
  images = _uniform(0, (2, 32, 32, 3))
  params = {"params": sampling_fixtures.random_init(disc, images, seed=1)}
  logits = disc.apply(params, images)
  assert logits.shape == (2, 8, 8, 1)
  real = jnp.asarray([2.0, 0.5, -1.0])
  fake = jnp.asarray([-2.0, 0.0, 1.0])
  np.testing.assert_allclose(disc_lib.hinge_discriminator_loss(real, fake),
                             0.5 * (np.mean([0, 0.5, 2]) + np.mean([0, 1, 2])), rtol=1e-6)
  np.testing.assert_allclose(disc_lib.hinge_generator_loss(fake), 1 / 3, rtol=1e-6)


def test_adaptive_weight_matches_full_gradients_of_the_last_layer():
  model = _micro(4)
  disc = disc_lib.PatchDiscriminator(width=8, num_layers=1)
  images = _uniform(2, (2, 16, 16, 3))
  params = nn.unbox(sampling_fixtures.random_init(model, images))
  # Give the last layer non-trivial weights (random_init draws biases 0).
  params["decoder"]["conv_out"]["kernel"] = 0.1 * jnp.asarray(np.random.default_rng(3).normal(
      size=params["decoder"]["conv_out"]["kernel"].shape), jnp.float32)
  disc_params = {"params": sampling_fixtures.random_init(disc, images, seed=1)}
  rec_loss = lambda x: jnp.mean(jnp.abs(x - images))
  gen_loss = lambda x: disc_lib.hinge_generator_loss(disc.apply(disc_params, x))

  def grad_norm(params, loss):
    def of_kernel(kernel):
      p = jax.tree.map(lambda x: x, params)
      p["decoder"]["conv_out"]["kernel"] = kernel
      return loss(model.apply({"params": p}, images)[0])
    return jnp.linalg.norm(jax.grad(of_kernel)(params["decoder"]["conv_out"]["kernel"]))

  @jax.jit  # One compile for the forward, the shortcut and the full gradients.
  def run(params):
    reconstruction, aux = model.apply({"params": params}, images)
    last = params["decoder"]["conv_out"]
    conv = disc_lib.last_layer_conv(aux["decoder_features"], last["kernel"], last["bias"])
    weight = disc_lib.adaptive_weight(aux["decoder_features"], last["kernel"], last["bias"],
                                      rec_loss, gen_loss)
    expected = grad_norm(params, rec_loss) / (grad_norm(params, gen_loss) + 1e-4)
    return reconstruction, conv, weight, expected

  reconstruction, conv, weight, expected = run(params)
  np.testing.assert_allclose(conv, reconstruction, atol=1e-5)
  np.testing.assert_allclose(weight, expected, rtol=1e-3)


def test_reconstruction_losses_and_psnr():
  a = _uniform(0, (2, 8, 8, 3))
  b = _uniform(1, (2, 8, 8, 3))
  out = tokenizer_losses.reconstruction_losses(a, b, 1.0, 2.0)
  np.testing.assert_allclose(out["loss"], np.mean(np.abs(a - b)) + 2 * np.mean((a - b) ** 2),
                             rtol=1e-5)
  mse01 = np.mean(((a + 1) / 2 - (b + 1) / 2) ** 2)
  np.testing.assert_allclose(tokenizer_losses.psnr_from_mse(out["mse"]), -10 * np.log10(mse01),
                             rtol=1e-5)


def test_perceptual_loss_from_local_weights(tmp_path):
  rng = np.random.default_rng(0)
  convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
  # Thin random "VGG" (real shapes would be 60 MB): the loader only needs consistent shapes.
  widths = [3] + [4] * 13
  weights = {}
  for j, index in enumerate(convs):
    fan_in = widths[j] * 9
    weights[f"features.{index}.weight"] = rng.normal(
        0, np.sqrt(2 / fan_in), (widths[j + 1], widths[j], 3, 3)).astype(np.float32)
    weights[f"features.{index}.bias"] = np.zeros(widths[j + 1], np.float32)
  path = os.path.join(tmp_path, "vgg.npz")
  np.savez(path, **weights)
  loss = tokenizer_losses.PerceptualLoss(path)
  a = _uniform(0, (2, 16, 16, 3))
  b = _uniform(1, (2, 16, 16, 3))
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  assert float(value_and_grad(a, a)[0]) == pytest.approx(0.0, abs=1e-6)
  value, grad = value_and_grad(a, b)
  assert float(value) > 0.01
  assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0
  with pytest.raises(FileNotFoundError, match="perceptual"):
    tokenizer_losses.PerceptualLoss(os.path.join(tmp_path, "missing.npz"))


def test_patch_encoder_tokens_depend_on_their_own_patch_only():
  f = 4
  model = tokenizer_lib.Tokenizer(channels=tokenizer_lib.variant_channels("micro", f),
                                  z_channels=16, encoder_kind="patch", vocab_size=64,
                                  code_dim=8, lookup_block_size=64)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 16, 24, 3)).astype(np.uint8)
  # Two identical patches at different places of the grid, one touching the border.
  images[:, 0:4, 0:4] = images[:, 8:12, 12:16]
  params = sampling_fixtures.random_init(model, jnp.asarray(images))
  assert set(params["encoder"]) >= {"patchify", "block0_in", "conv_out"}
  features = lambda x: model.apply({"params": params}, jnp.asarray(x),
                                   method=lambda m, x: m.encoder(tokenizer_lib.images_to_float(x)))
  z = np.asarray(features(images))
  assert z.shape == (2, 4, 6, 16)
  np.testing.assert_allclose(z[:, 0, 0], z[:, 2, 3], rtol=1e-5, atol=1e-6)
  # Changing one patch changes that token's features and no other.
  changed = images.copy()
  changed[:, 4:8, 8:12] = 255 - changed[:, 4:8, 8:12]
  diff = np.abs(np.asarray(features(changed)) - z).max(axis=-1)
  assert np.all(diff[:, 1, 2] > 1e-4)
  diff[:, 1, 2] = 0
  assert np.all(diff == 0)
  ids = model.apply({"params": params}, jnp.asarray(images), method="encode")
  np.testing.assert_array_equal(ids[:, 0, 0], ids[:, 2, 3])


def test_tokenizer_rejects_an_unknown_encoder():
  model = tokenizer_lib.Tokenizer(channels=(8, 8, 16), encoder_kind="vit")
  with pytest.raises(ValueError, match="encoder must be 'conv' or 'patch'"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))


def test_nearest_upsample_matches_resize_and_has_no_scatter_gradient():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 4)), jnp.bfloat16)
  want = jax.image.resize(x, (2, 6, 10, 4), "nearest")
  np.testing.assert_array_equal(np.asarray(tokenizer_lib.upsample_nearest_2x(x), np.float32),
                                np.asarray(want, np.float32))
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 10, 4)), jnp.float32)
  loss = lambda f: lambda v: jnp.sum(f(v).astype(jnp.float32) * weights)
  grad = jax.grad(loss(tokenizer_lib.upsample_nearest_2x))(x)
  ref = jax.grad(loss(lambda v: jax.image.resize(v, (2, 6, 10, 4), "nearest")))(x)
  np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref, np.float32),
                             rtol=1e-2, atol=1e-2)
  hlo = jax.jit(jax.grad(loss(tokenizer_lib.upsample_nearest_2x))).lower(x).as_text()
  assert "stablehlo.scatter" not in hlo
