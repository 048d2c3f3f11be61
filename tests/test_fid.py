"""Tests for mdd.eval.fid (Fréchet distance, statistics) and mdd.eval.inception (FID Inception)."""

import collections
import importlib.util
import io
import json
import os
import pickle
import pickletools
import sys
import types
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import scipy.linalg
from PIL import Image

from mdd.eval import fid
from mdd.eval import inception
import sampling_fixtures


def _random_spd(rng, dim, rank=None):
  a = rng.normal(size=(dim, rank or dim + 3))
  return a @ a.T / a.shape[1]


# --- Fréchet distance ----------------------------------------------------------------------------


def _scipy_frechet(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [3, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm(dim):
  rng = np.random.default_rng(dim)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim)
  ours = fid.frechet_distance(mu1, s1, mu2, s2)
  assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
  assert ours > 0.1


def test_frechet_distance_diagonal_closed_form_and_identity():
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, 1e-12)
  s = _random_spd(rng, 20)
  assert abs(fid.frechet_distance(mu1[:1].repeat(20), s, mu1[:1].repeat(20), s)) < 1e-9


def test_frechet_distance_rank_deficient_is_stable():
  # Fewer samples than dimensions: singular covariances, where sqrtm(Σ1Σ2) is ill-conditioned.
  rng = np.random.default_rng(1)
  f1, f2 = rng.normal(size=(10, 40)), rng.normal(size=(10, 40)) + 0.3
  (mu1, s1), (mu2, s2) = fid.compute_statistics(f1), fid.compute_statistics(f2)
  ours = fid.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(ours) and ours > 0
  assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-5)
  with pytest.raises(ValueError, match="shapes"):
    fid.frechet_distance(mu1, s1, mu2[:5], s2)


def test_statistics_npz_roundtrip_and_adm_keys(tmp_path):
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(50, 6)).astype(np.float32)
  mu, sigma = fid.compute_statistics(feats)
  assert mu.dtype == np.float64 and sigma.shape == (6, 6)
  np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False))
  path = str(tmp_path / "stats.npz")
  fid.save_statistics(path, mu, sigma)
  with np.load(path) as data:
    assert sorted(data.files) == ["mu", "sigma"]
  mu2, sigma2 = fid.load_statistics(path)
  np.testing.assert_array_equal(mu, mu2)
  # ADM reference batches carry images and spatial statistics next to mu/sigma.
  adm = str(tmp_path / "adm.npz")
  np.savez(adm, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma, mu_s=mu,
           sigma_s=sigma)
  np.testing.assert_array_equal(fid.reference_statistics(adm, weights="unused")[1], sigma)
  np.savez(str(tmp_path / "bad.npz"), mean=mu)
  with pytest.raises(ValueError, match="mu/sigma"):
    fid.load_statistics(str(tmp_path / "bad.npz"))


def test_tokenizer_feature_distance_uses_feature_fn():
  rng = np.random.default_rng(3)
  images_a = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  images_b = np.clip(images_a.astype(int) + 60, 0, 255).astype(np.uint8)
  feature_fn = lambda x: x.reshape(len(x), -1, 3).mean(axis=1) / 255.0  # mean colour
  same = fid.tokenizer_feature_distance(images_a, images_a, feature_fn, batch_size=16)
  shifted = fid.tokenizer_feature_distance(images_a, images_b, feature_fn, batch_size=16)
  assert abs(same) < 1e-9 and shifted > 0.01
  fa, fb = feature_fn(images_a), feature_fn(images_b)
  assert shifted == pytest.approx(
      fid.frechet_distance(*fid.compute_statistics(fa), *fid.compute_statistics(fb)))


def test_image_batches_from_dir_and_npz(tmp_path):
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
  for i, img in enumerate(images):
    os.makedirs(tmp_path / "d" / f"{i:05d}" / "samples")
    Image.fromarray(img).save(tmp_path / "d" / f"{i:05d}" / "samples" / "0000.png")
  batches = list(fid.iterate_image_batches(str(tmp_path / "d"), batch_size=2))
  assert [len(b) for b in batches] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate(batches), images)
  np.savez(tmp_path / "imgs.npz", arr_0=images)
  np.testing.assert_array_equal(
      np.concatenate(list(fid.iterate_image_batches(str(tmp_path / "imgs.npz"), 3))), images)


# --- Resize pipeline (pinned to torch's bilinear, align_corners=False) -------------------------


def _torch_bilinear_reference(image, out_h, out_w):
  """Pixel-by-pixel transcription of torch's upsample_bilinear2d (align_corners=False)."""
  in_h, in_w = image.shape[:2]
  out = np.zeros((out_h, out_w) + image.shape[2:])

  def source(i, in_size, out_size):
    s = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    i0 = min(int(np.floor(s)), in_size - 1)
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    return i0, i1, s - i0

  for y in range(out_h):
    y0, y1, ly = source(y, in_h, out_h)
    for x in range(out_w):
      x0, x1, lx = source(x, in_w, out_w)
      out[y, x] = ((1 - ly) * ((1 - lx) * image[y0, x0] + lx * image[y0, x1])
                   + ly * ((1 - lx) * image[y1, x0] + lx * image[y1, x1]))
  return out


def test_resize_pinned_to_torch_bilinear():
  tiny = np.array([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]
  expected = np.array([[0, .25, .75, 1], [.5, .75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5],
                       [2, 2.25, 2.75, 3]])
  np.testing.assert_allclose(inception.resize_bilinear_torch(jnp.asarray(tiny), 4, 4)[0, :, :, 0],
                             expected, atol=1e-6)
  rng = np.random.default_rng(5)
  for in_h, in_w, out_h, out_w in [(7, 5, 13, 17), (40, 33, 9, 11), (32, 32, 29, 29)]:
    image = rng.uniform(size=(in_h, in_w, 3))
    ours = np.asarray(inception.resize_bilinear_torch(jnp.asarray(image[None]), out_h, out_w))[0]
    np.testing.assert_allclose(ours, _torch_bilinear_reference(image, out_h, out_w), atol=1e-5)
  # Shrinking must not antialias (jax.image.resize would): differs from an antialiased resize.
  image = rng.uniform(size=(1, 64, 64, 3)).astype(np.float32)
  antialiased = jax.image.resize(image, (1, 16, 16, 3), "linear", antialias=True)
  ours = np.asarray(inception.resize_bilinear_torch(image, 16, 16))
  assert np.abs(ours - antialiased).max() > 0.05


# --- Weights ------------------------------------------------------------------------------------


def _pytorch_fid_checkpoint_shapes():
  """The FID checkpoint's keys and shapes, written out from torchvision's Inception3 layout."""
  convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3),
           ("Conv2d_2b_3x3", 32, 64, 3, 3), ("Conv2d_3b_1x1", 64, 80, 1, 1),
           ("Conv2d_4a_3x3", 80, 192, 3, 3)]

  def block_a(name, cin, pool):
    return [(f"{name}.branch1x1", cin, 64, 1, 1), (f"{name}.branch5x5_1", cin, 48, 1, 1),
            (f"{name}.branch5x5_2", 48, 64, 5, 5), (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
            (f"{name}.branch3x3dbl_2", 64, 96, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", cin, pool, 1, 1)]

  def block_c(name, c7):
    return [(f"{name}.branch1x1", 768, 192, 1, 1), (f"{name}.branch7x7_1", 768, c7, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", c7, 192, 7, 1),
            (f"{name}.branch7x7dbl_1", 768, c7, 1, 1), (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7), (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", c7, 192, 1, 7), (f"{name}.branch_pool", 768, 192, 1, 1)]

  def block_e(name, cin):
    return [(f"{name}.branch1x1", cin, 320, 1, 1), (f"{name}.branch3x3_1", cin, 384, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
            (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
            (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1), (f"{name}.branch_pool", cin, 192, 1, 1)]

  convs += block_a("Mixed_5b", 192, 32) + block_a("Mixed_5c", 256, 64)
  convs += block_a("Mixed_5d", 288, 64)
  convs += [("Mixed_6a.branch3x3", 288, 384, 3, 3), ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
            ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
  convs += block_c("Mixed_6b", 128) + block_c("Mixed_6c", 160) + block_c("Mixed_6d", 160)
  convs += block_c("Mixed_6e", 192)
  convs += [("Mixed_7a.branch3x3_1", 768, 192, 1, 1), ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
            ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1),
            ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
            ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
            ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
  convs += block_e("Mixed_7b", 1280) + block_e("Mixed_7c", 2048)
  shapes = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}
  for name, cin, cout, kh, kw in convs:
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for suffix in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{suffix}"] = (cout,)
    shapes[f"{name}.bn.num_batches_tracked"] = ()
  return shapes


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in _pytorch_fid_checkpoint_shapes().items():
    if key.endswith("num_batches_tracked"):
      state[key] = np.array(0, np.int64)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      state[key] = (rng.normal(size=shape) * 0.1).astype(np.float32)
  return state


def _reference_basic_conv(x, state, name, stride, padding):
  """NHWC conv with a torch OIHW weight, then inference BatchNorm (eps 1e-3) and ReLU."""
  w = state[f"{name}.conv.weight"].astype(np.float64)
  cout, _, kh, kw = w.shape
  x = np.pad(x.astype(np.float64), ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, cout))
  for dy in range(kh):
    for dx in range(kw):
      patch = x[:, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride, :]
      out += np.einsum("bhwc,oc->bhwo", patch, w[:, :, dy, dx])
  bn = lambda s: state[f"{name}.bn.{s}"].astype(np.float64)
  out = (out - bn("running_mean")) / np.sqrt(bn("running_var") + 1e-3) * bn("weight") + bn("bias")
  return np.maximum(out, 0)


def test_pools_match_tensorflow_semantics():
  # Average pools ignore padding (TF), so a constant map stays constant up to the border.
  ones = jnp.ones((1, 5, 5, 2))
  np.testing.assert_allclose(inception._avg_pool_3x3(ones), ones, atol=1e-6)
  rng = np.random.default_rng(10)
  x = rng.normal(size=(1, 4, 4, 1)).astype(np.float32)
  corner = inception._avg_pool_3x3(jnp.asarray(x))[0, 0, 0, 0]
  assert corner == pytest.approx(x[0, :2, :2, 0].mean(), abs=1e-6)
  # The last E block max-pools its pool branch (pytorch-fid's FIDInceptionE_2).
  block = inception.InceptionE(max_pool_branch=True)
  x = jnp.asarray(rng.normal(size=(1, 4, 4, 8)).astype(np.float32))
  # Some weights of the block's shapes (only its pool branch's input is checked): no init to run.
  abstract = jax.eval_shape(block.init, jax.random.key(0), x)
  variables = {"params": sampling_fixtures.random_params(abstract["params"], 0),
               "batch_stats": jax.tree.map(lambda a: np.ones(a.shape, a.dtype),
                                           abstract["batch_stats"])}
  captured = {}

  def spy(next_fun, args, kwargs, context):
    if context.module.name == "branch_pool" and context.method_name == "__call__":
      captured["pool_input"] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    block.apply(variables, x)
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  expected = np.max([padded[:, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)], 0)
  np.testing.assert_allclose(captured["pool_input"], expected, atol=1e-6)


def test_checkpoint_layout_matches_pytorch_fid():
  expected = {k: v for k, v in _pytorch_fid_checkpoint_shapes().items()
              if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
  assert inception.torch_state_dict_shapes() == expected


def test_weight_mapping_from_random_safetensors(tmp_path):
  state = _random_state_dict()
  path = str(tmp_path / "pt_inception-random.safetensors")
  safetensors.numpy.save_file(state, path)
  model, variables = inception.load_fid_inception(path)
  assert isinstance(model, inception.FIDInceptionV3)
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"][0, 3, 5, 7],
                                state["Mixed_6b.branch7x7_2.conv.weight"][7, 5, 0, 3])
  np.testing.assert_array_equal(stats["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(params["Conv2d_4a_3x3"]["bn"]["scale"],
                                state["Conv2d_4a_3x3.bn.weight"])
  # Run mapped layers against a NumPy convolution that reads the torch layout directly:
  # a strided square kernel and both orientations of the asymmetric 1x7 / 7x1 kernels.
  rng = np.random.default_rng(6)
  cases = [("Conv2d_1a_3x3", 3, (3, 3), 2, (0, 0)),
           ("Mixed_6b.branch7x7_2", 128, (1, 7), 1, (0, 3)),
           ("Mixed_6b.branch7x7_3", 128, (7, 1), 1, (3, 0)),
           ("Mixed_7b.branch3x3_2a", 384, (1, 3), 1, (0, 1))]
  for name, cin, kernel, stride, padding in cases:
    x = rng.normal(size=(2, 11, 13, cin)).astype(np.float32)
    node_p, node_s = params, stats
    for part in name.split("."):
      node_p, node_s = node_p[part], node_s[part]
    cout = state[f"{name}.conv.weight"].shape[0]
    layer = inception.BasicConv(cout, kernel, (stride, stride), padding)
    ours = layer.apply({"params": node_p, "batch_stats": node_s}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), _reference_basic_conv(x, state, name, stride,
                                                                       padding),
                               rtol=1e-4, atol=1e-4, err_msg=name)
  # A checkpoint with a wrong shape or a missing key is refused by name.
  del state["Mixed_5b.branch1x1.bn.bias"]
  with pytest.raises(ValueError, match="missing"):
    inception.variables_from_state_dict(state)
  state = _random_state_dict()
  state["Mixed_5b.branch1x1.bn.bias"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="shape"):
    inception.variables_from_state_dict(state)


def test_full_network_features_on_random_weights(tmp_path):
  """One real forward pass: 2048-d, finite, batch-independent, resize applied."""
  path = str(tmp_path / "w.npz")
  np.savez(path, **_random_state_dict(1))
  model, variables = inception.load_fid_inception(path)
  feature_fn = inception.make_feature_fn(model, variables, batch_size=2)
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  feats = feature_fn(images)
  assert feats.shape == (3, 2048) and feats.dtype == np.float64
  assert np.all(np.isfinite(feats)) and np.std(feats) > 0
  np.testing.assert_allclose(feature_fn(images[1:2])[0], feats[1], rtol=1e-4, atol=1e-5)
  assert np.abs(feats[0] - feats[1]).max() > 0


def _load_fid_golden_maker():
  """tests/fixtures/make_fid_golden.py as a module (its torch imports live inside `main`)."""
  path = os.path.join(os.path.dirname(__file__), "fixtures", "make_fid_golden.py")
  spec = importlib.util.spec_from_file_location("make_fid_golden", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_features_match_pytorch_fid_golden(tmp_path):
  """mdd's FID Inception reproduces pytorch-fid's 2048-d features (stored golden values).

  How the fixture was made: tests/fixtures/make_fid_golden.py, run once in a throwaway venv with
  torch 2.14.1, torchvision 0.29.1 and pytorch-fid 0.3.0 (the exact commands are in its
  docstring). It builds pytorch-fid's `InceptionV3([3])` (resize to 299, scale to [-1, 1],
  FID Inception blocks) with `load_state_dict_from_url` replaced by random weights from
  `random_fid_state_dict` (NumPy, seed 20151205, BN running stats random too), feeds the two
  NumPy-drawn uint8 images of `golden_images` (37x53: upsampled; 317x301: downsampled) as
  pytorch-fid does (ToTensor, i.e. / 255), and stores only the features in
  fid_inception_golden.npz. Here the same weights and images are redrawn with NumPy, written
  as safetensors, and loaded through `load_fid_inception` / `make_feature_fn`.
  Measured when the fixture was made: max |diff| 6e-6 on features up to ~12.
  """
  maker = _load_fid_golden_maker()
  with np.load(os.path.join(os.path.dirname(__file__), "fixtures",
                            "fid_inception_golden.npz")) as golden:
    golden = {k: golden[k] for k in golden.files}
  state = maker.random_fid_state_dict(inception.torch_state_dict_shapes(), int(golden["seed"]))
  path = str(tmp_path / "random_fid_inception.safetensors")
  safetensors.numpy.save_file(state, path)
  model, variables = inception.load_fid_inception(path)
  feature_fn = inception.make_feature_fn(model, variables, batch_size=1)
  for name, images in maker.golden_images(int(golden["seed"])).items():
    expected = golden[f"features_{name}"].astype(np.float64)
    assert expected.shape == (1, inception.FEATURE_DIM) and np.std(expected) > 0.5
    np.testing.assert_allclose(feature_fn(images), expected, rtol=1e-4, atol=1e-4,
                               err_msg=f"image {name} {images.shape}")


# --- The torch-free .pth reader -----------------------------------------------------------------


class _FakeTorch:
  """Registers a minimal fake `torch` so `pickle` writes torch's class references."""

  def __enter__(self):
    self.saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
      return args
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in ("FloatStorage", "LongStorage"):
      cls = type(name, (), {"__module__": "torch", "__qualname__": name})
      setattr(torch, name, cls)
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    self.torch = torch
    return torch

  def __exit__(self, *exc):
    for key, value in self.saved.items():
      if value is None:
        sys.modules.pop(key, None)
      else:
        sys.modules[key] = value


class _Tensor:
  """A tensor view of a flat storage (key), pickled the way torch pickles tensors."""

  def __init__(self, torch, key, storage_class, offset, size, stride):
    self.torch, self.key, self.storage_class = torch, key, storage_class
    self.offset, self.size, self.stride = offset, size, stride

  def __reduce__(self):
    storage = ("storage-ref", self.key, self.storage_class)
    return (self.torch._utils._rebuild_tensor_v2,
            (storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


def _write_fake_torch_checkpoint(path, tensors, legacy):
  """Writes {name: (flat array, offset, size, stride)} as torch.save would (zip or legacy)."""
  with _FakeTorch() as torch:
    storages, state = {}, collections.OrderedDict()
    for i, (name, (flat, offset, size, stride)) in enumerate(tensors.items()):
      cls = torch.FloatStorage if flat.dtype == np.float32 else torch.LongStorage
      storages[str(i)] = (flat, cls)
      state[name] = _Tensor(torch, str(i), cls, offset, size, stride)

    class Pickler(pickle.Pickler):

      def persistent_id(self, obj):
        if isinstance(obj, tuple) and obj and obj[0] == "storage-ref":
          flat, cls = storages[obj[1]]
          base = ("storage", cls, obj[1], "cpu", flat.size)
          return base + (None,) if legacy else base
        return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
  if legacy:
    with open(path, "wb") as f:
      for header in (0x1950a86a20f9469cfc6c, 1001, {"little_endian": True}):
        pickle.dump(header, f, protocol=2)
      f.write(buffer.getvalue())
      pickle.dump(list(storages), f, protocol=2)
      for flat, _ in storages.values():
        f.write(np.int64(flat.size).tobytes())
        f.write(flat.tobytes())
  else:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", buffer.getvalue())
      for key, (flat, _) in storages.items():
        archive.writestr(f"archive/data/{key}", flat.tobytes())
      archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_free_pth_reader(tmp_path, legacy):
  rng = np.random.default_rng(8)
  flat = rng.normal(size=24).astype(np.float32)
  tensors = {
      "a.conv.weight": (flat, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
      "a.t": (flat, 2, (3, 2), (1, 3)),  # a strided (transposed) view with an offset
      "a.bn.num_batches_tracked": (np.array([7], np.int64), 0, (), ()),
  }
  path = str(tmp_path / "ckpt.pth")
  _write_fake_torch_checkpoint(path, tensors, legacy)
  state = inception.read_torch_checkpoint(path)
  np.testing.assert_array_equal(state["a.conv.weight"], flat.reshape(2, 3, 2, 2))
  np.testing.assert_array_equal(state["a.t"], np.lib.stride_tricks.as_strided(
      flat[2:], (3, 2), (4, 12)))
  assert int(state["a.bn.num_batches_tracked"]) == 7
  assert inception.read_state_dict(path, use_torch=False).keys() == state.keys()
  (tmp_path / "junk.pth").write_bytes(pickle.dumps("hello"))
  with pytest.raises(ValueError, match="neither"):
    inception.read_torch_checkpoint(str(tmp_path / "junk.pth"))
  # Arbitrary classes are refused instead of executed.
  (tmp_path / "evil.pth").write_bytes(pickle.dumps(0x1950a86a20f9469cfc6c) + pickle.dumps(1001)
                                      + pickle.dumps({}) + pickle.dumps(collections.Counter()))
  with pytest.raises(ValueError, match="not a plain state dict"):
    inception.read_torch_checkpoint(str(tmp_path / "evil.pth"))


def test_fid_cli_writes_statistics(tmp_path):
  weights = str(tmp_path / "w.safetensors")
  safetensors.numpy.save_file(_random_state_dict(2), weights)
  rng = np.random.default_rng(9)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        tmp_path / f"{i}.png")
  stats = str(tmp_path / "stats.npz")
  fid.main(["--weights", weights, "--images", str(tmp_path), "--save_stats", stats,
            "--batch_size", "2"])
  mu, sigma = fid.load_statistics(stats)
  assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and np.std(mu) > 0
  with pytest.raises(SystemExit):
    fid.main(["--weights", weights, "--images", str(tmp_path)])  # neither --ref nor --save_stats
  with pytest.raises(SystemExit, match="weights not found"):
    fid.main(["--weights", str(tmp_path / "none.pth"), "--images", str(tmp_path),
              "--save_stats", stats])


@pytest.mark.slow
def test_fid_cli_on_npz_images(tmp_path):
  """The CLI end to end on a random checkpoint: FID of a set against its own statistics is 0."""
  weights = str(tmp_path / "w.safetensors")
  safetensors.numpy.save_file(_random_state_dict(2), weights)
  rng = np.random.default_rng(9)
  np.savez(tmp_path / "imgs.npz", arr_0=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
  stats = str(tmp_path / "stats.npz")
  fid.main(["--weights", weights, "--images", str(tmp_path / "imgs.npz"), "--save_stats", stats,
            "--ref", stats, "--batch_size", "4", "--out", str(tmp_path / "fid.json")])
  result = json.loads((tmp_path / "fid.json").read_text())
  mu, sigma = fid.load_statistics(stats)
  assert result["num_images"] == 4
  # Four samples give a rank-3 covariance; only rounding noise of its null space remains.
  assert abs(result["fid"]) < 1e-5 * np.trace(sigma)


def test_convert_cli_writes_loadable_safetensors(tmp_path):
  state = _random_state_dict(3)
  source, target = str(tmp_path / "w.npz"), str(tmp_path / "w.safetensors")
  np.savez(source, **state)
  inception.main(["--convert", source, target])
  converted = inception.read_state_dict(target)
  assert set(converted) == {k for k in state if not k.endswith("num_batches_tracked")}
  np.testing.assert_array_equal(converted["Mixed_7c.branch_pool.conv.weight"],
                                state["Mixed_7c.branch_pool.conv.weight"])
  (tmp_path / "w.txt").write_text("x")
  with pytest.raises(ValueError, match="unknown weight file type"):
    inception.read_state_dict(str(tmp_path / "w.txt"))


class _Payload:
  """Unpickled without restriction, this creates `path`: the proof that code ran."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


@pytest.mark.parametrize("entry", ["magic", "protocol", "sys_info", "state", "storage_keys",
                                   "zip_data_pkl"])
def test_a_crafted_weight_file_runs_no_code(tmp_path, entry):
  """Every pickle a .pth holds is read without running code: the payload's side effect (a file)
  never appears, and the read fails with a one-line ValueError."""
  marker = str(tmp_path / "pwned")
  payload = pickle.dumps(_Payload(marker), protocol=2)
  path = str(tmp_path / f"{entry}.pth")
  good = str(tmp_path / "good.pth")
  _write_fake_torch_checkpoint(good, {"w": (np.ones(4, np.float32), 0, (4,), (1,))},
                               legacy=entry != "zip_data_pkl")
  if entry == "zip_data_pkl":
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
      for name in src.namelist():
        dst.writestr(name, payload if name.endswith("data.pkl") else src.read(name))
  else:
    # Split the legacy file into its five pickles (read as opcodes, never executed) + storages.
    with open(good, "rb") as f:
      data = f.read()
    stream, pickles = io.BytesIO(data), []
    for _ in range(5):
      start = stream.tell()
      for _ in pickletools.genops(stream):
        pass
      pickles.append(data[start:stream.tell()])
    rest = data[stream.tell():]
    index = ["magic", "protocol", "sys_info", "state", "storage_keys"].index(entry)
    pickles[index] = payload
    with open(path, "wb") as f:
      f.write(b"".join(pickles) + rest)
  with pytest.raises(ValueError) as error:
    inception.read_state_dict(path, use_torch=False)
  assert "\n" not in str(error.value)
  assert not os.path.exists(marker), f"the {entry} pickle ran the payload"
