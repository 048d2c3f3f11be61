"""The FID Inception-v3 in Flax, loading pytorch-fid's weights from a local file.

This is the network of pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`, itself a port of the
TensorFlow graph FID was defined with), not torchvision's Inception: average pools inside the
A/C/E blocks ignore padding, and the last E block max-pools its pool branch. Features are the
2048-d global average pool; inputs are resized to 299x299 with torch's bilinear
(`align_corners=False`, no antialiasing) and scaled to [-1, 1], exactly as pytorch-fid does.

Weights are read, by parameter name, from any of:
  * `.pth` / `.pt`: the torch checkpoint, through torch when it is importable, else through the
    small torch-free reader below (zip format of torch >= 1.6 and the legacy format before it);
  * `.safetensors` or `.npz`: a converted copy with the same key names and torch layouts
    (`python -m mdd.eval.inception --convert IN.pth OUT.safetensors` writes one).
Keys the network does not use (`fc.*`, `AuxLogits.*`, `*.num_batches_tracked`) are ignored.
"""

import argparse
import collections
import io
import os
import pickle
import sys
import zipfile
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DIM = 2048
INPUT_SIZE = 299
_BN_EPSILON = 1e-3
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


class BasicConv(nn.Module):
  """Conv (no bias) + BatchNorm (running statistics) + ReLU, torch's `BasicConv2d`."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = tuple((p, p) for p in self.padding)
    # HIGHEST precision: TF32 convolutions on GPUs move FID by more than its noise.
    x = nn.Conv(self.features, self.kernel_size, self.strides, pad, use_bias=False,
                precision=jax.lax.Precision.HIGHEST, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # TensorFlow's average pool divides by the number of real (unpadded) pixels.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x):
  return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """The E block; `max_pool_branch` reproduces the FID graph's max pool in the last one."""
  max_pool_branch: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Maps images in [0, 1], float [B, H, W, 3], to pool features [B, 2048]."""

  @nn.compact
  def __call__(self, images):
    x = resize_bilinear_torch(images, INPUT_SIZE, INPUT_SIZE)
    x = 2.0 * x - 1.0
    x = BasicConv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# --- Resizing ---------------------------------------------------------------------------------


def _torch_linear_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of torch's 1-D linear interpolation, `align_corners=False`.

  Source positions are computed in float32 like torch's kernels do for float images (CPU and
  CUDA): in float64 they drift by up to ~in_size * 2^-24 pixels, which measured 5e-5 on
  400 -> 299 px inputs against pytorch-fid, 3e-7 with float32.
  """
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  src = (np.arange(out_size, dtype=f32) + f32(0.5)) * scale - f32(0.5)
  src = np.maximum(src, f32(0.0))  # torch clamps at 0
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(f32), 0.0, 1.0).astype(np.float64)
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def resize_bilinear_torch(images, height: int, width: int):
  """`F.interpolate(mode="bilinear", align_corners=False)` on NHWC images, as two matmuls.

  Written as separable interpolation matrices so the arithmetic is torch's by construction
  (no antialiasing when shrinking), whatever `jax.image.resize` does in a given version.
  """
  _, in_h, in_w, _ = images.shape
  if (in_h, in_w) == (height, width):
    return images
  wy = jnp.asarray(_torch_linear_weights(in_h, height), images.dtype)
  wx = jnp.asarray(_torch_linear_weights(in_w, width), images.dtype)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", wy, images, precision=hi)
  return jnp.einsum("pw,bowc->bopc", wx, x, precision=hi)


# --- Weights ----------------------------------------------------------------------------------


def _bn_conv_paths(tree, prefix=()):
  """Yields the module paths (tuples) of every BasicConv in a params tree."""
  if "conv" in tree and "bn" in tree:
    yield prefix
    return
  for name, sub in tree.items():
    yield from _bn_conv_paths(sub, prefix + (name,))


def torch_state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """Names and shapes of the torch state dict this network reads (torch layouts)."""
  variables = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                             jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
  shapes = {}
  for path in _bn_conv_paths(variables["params"]):
    node = variables["params"]
    for name in path:
      node = node[name]
    kh, kw, cin, cout = node["conv"]["kernel"].shape
    key = ".".join(path)
    shapes[f"{key}.conv.weight"] = (cout, cin, kh, kw)
    for suffix in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
      shapes[f"{key}.{suffix}"] = (cout,)
  return shapes


def variables_from_state_dict(state_dict) -> dict:
  """Flax variables ({'params', 'batch_stats'}) from a torch-named dict of arrays."""
  expected = torch_state_dict_shapes()
  used = {k: v for k, v in state_dict.items()
          if not k.startswith(_IGNORED_PREFIXES) and not k.endswith("num_batches_tracked")}
  missing = sorted(set(expected) - set(used))
  unexpected = sorted(set(used) - set(expected))
  if missing or unexpected:
    raise ValueError(f"FID Inception weights do not match: missing {missing[:5]} "
                     f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
  params, batch_stats = {}, {}

  def put(tree, path, leaf, value):
    for name in path:
      tree = tree.setdefault(name, {})
    tree[leaf] = value

  for key, shape in expected.items():
    value = np.asarray(used[key], np.float32)
    if value.shape != shape:
      raise ValueError(f"FID Inception weight {key} has shape {value.shape}, expected {shape}")
    *path, layer, field = key.split(".")
    path = tuple(path) + (layer,)
    if field == "weight" and layer == "conv":
      put(params, path, "kernel", jnp.asarray(value.transpose(2, 3, 1, 0)))  # OIHW -> HWIO
    elif field == "weight":
      put(params, path, "scale", jnp.asarray(value))
    elif field == "bias":
      put(params, path, "bias", jnp.asarray(value))
    elif field == "running_mean":
      put(batch_stats, path, "mean", jnp.asarray(value))
    else:
      put(batch_stats, path, "var", jnp.asarray(value))
  return {"params": params, "batch_stats": batch_stats}


def read_state_dict(path: str, use_torch: bool | None = None) -> dict[str, np.ndarray]:
  """Reads a torch-named dict of numpy arrays from .pth/.pt, .safetensors or .npz.

  `use_torch=None` uses torch for .pth files when it is importable, else the torch-free reader.
  """
  if not os.path.isfile(path):
    raise ValueError(f"FID Inception weights not found: {path!r}")
  lower = path.lower()
  if lower.endswith(".safetensors"):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors.numpy.load_file(path))
  if lower.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  if not lower.endswith((".pth", ".pt", ".bin", ".ckpt")):
    raise ValueError(f"unknown weight file type {path!r}: use .pth, .safetensors or .npz")
  if use_torch is None:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      use_torch = True
    except ImportError:
      use_torch = False
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
  return read_torch_checkpoint(path)


def load_fid_inception(path: str, use_torch: bool | None = None):
  """Returns `(model, variables)` for the FID Inception from a local weight file."""
  return FIDInceptionV3(), variables_from_state_dict(read_state_dict(path, use_torch))


def make_feature_fn(model, variables, batch_size: int = 50):
  """Returns `features(images uint8 [N, H, W, 3]) -> float64 [N, 2048]`, batched and jitted.

  Batches are padded to `batch_size` so every call reuses one compiled program per image size.
  """

  @jax.jit
  def _features(batch):
    return model.apply(variables, batch.astype(jnp.float32) / 255.0)

  def features(images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    out = []
    for start in range(0, len(images), batch_size):
      batch = images[start:start + batch_size]
      padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:],
                                               np.uint8)]) if len(batch) < batch_size else batch
      out.append(np.asarray(_features(padded), np.float64)[:len(batch)])
    return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))

  return features


# --- Torch-free checkpoint reader -------------------------------------------------------------
# A torch checkpoint is a pickle whose tensors are rebuilt by `torch._utils._rebuild_tensor_v2`
# from storages the pickle names by "persistent id"; the raw storage bytes live in zip members
# `<root>/data/<key>` (torch >= 1.6) or follow the pickle in the legacy format. Only the classes
# a state dict needs are allowed, and every other pickle in the file (the legacy format's magic
# number, protocol, system info and storage keys) is read as plain data with no class allowed at
# all, so a crafted file cannot run code.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageType:

  def __init__(self, name):
    if name not in _STORAGE_DTYPES or _STORAGE_DTYPES[name] is None:
      raise ValueError(f"unsupported torch storage type {name} in checkpoint")
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat numpy array filled lazily (legacy checkpoints store bytes after the pickle)."""

  def __init__(self, dtype, numel):
    self.dtype, self.numel, self.array = dtype, numel, None


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  if not size:
    return ("tensor", storage, offset, (), ())
  return ("tensor", storage, offset, tuple(size), tuple(stride))


def _materialize(spec):
  _, storage, offset, size, stride = spec
  if not size:
    return storage.array[offset].copy()
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage.array[offset:], shape=size, strides=tuple(s * itemsize for s in stride)).copy()


class _PlainDataUnpickler(pickle.Unpickler):
  """Numbers, strings, lists, tuples and dicts only: any class or persistent id is refused."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refuses {module}.{name}: this part of a checkpoint holds "
                                 "plain data only")

  def persistent_load(self, pid):
    raise pickle.UnpicklingError("refuses a persistent id where plain data belongs")


def _load_plain(f):
  return _PlainDataUnpickler(f).load()


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise pickle.UnpicklingError(f"checkpoint needs {module}.{name}; not a plain state dict")

  def persistent_load(self, pid):
    if pid[0] != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r}")
    return self._load_storage(pid)


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state dict (tensors only) into numpy arrays without importing torch."""
  try:
    return _read_torch_checkpoint(path)
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"cannot read {path!r} as a torch state dict: {e}") from None


def _read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      pickles = [n for n in names if n.endswith("data.pkl")]
      if not pickles:
        raise ValueError(f"{path!r} is a zip file without data.pkl: not a torch checkpoint")
      root = pickles[0][:-len("data.pkl")]
      storages = {}

      def load_storage(pid):
        _, storage_type, key, _, numel = pid[:5]
        if key not in storages:
          raw = archive.read(f"{root}data/{key}")
          storage = _Storage(storage_type.dtype, numel)
          storage.array = np.frombuffer(raw, storage_type.dtype)
          storages[key] = storage
        return storages[key]

      state = _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()
  else:
    with open(path, "rb") as f:
      if _load_plain(f) != _LEGACY_MAGIC:
        raise ValueError(f"{path!r} is neither a zip nor a legacy torch checkpoint")
      _load_plain(f)  # protocol version
      _load_plain(f)  # system info
      storages = {}

      def load_storage(pid):
        _, storage_type, key, _, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
          raise ValueError("legacy storage views are not supported")
        storages.setdefault(key, _Storage(storage_type.dtype, numel))
        return storages[key]

      state = _Unpickler(f, load_storage).load()
      for key in _load_plain(f):
        storage = storages[key]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        if numel != storage.numel:
          raise ValueError(f"storage {key} of {path!r} has {numel} elements, "
                           f"expected {storage.numel}")
        storage.array = np.frombuffer(f.read(numel * storage.dtype.itemsize), storage.dtype)
  if not isinstance(state, dict):
    raise ValueError(f"{path!r} does not hold a state dict")
  return {k: _materialize(v) for k, v in state.items()
          if isinstance(v, tuple) and v and v[0] == "tensor"}


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(description="Convert FID Inception weights (torch-free).")
  parser.add_argument("--convert", nargs=2, metavar=("IN", "OUT"), required=True,
                      help="IN: .pth/.safetensors/.npz; OUT: .safetensors or .npz")
  args = parser.parse_args(argv)
  try:
    _convert(*args.convert)
  except ValueError as e:
    sys.exit(f"error: {e}")


def _convert(source: str, target: str):
  state = read_state_dict(source)
  variables_from_state_dict(state)  # validates names and shapes before writing
  state = {k: np.ascontiguousarray(v) for k, v in state.items()
           if not k.endswith("num_batches_tracked")}
  if target.endswith(".safetensors"):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    safetensors.numpy.save_file(state, target)
  elif target.endswith(".npz"):
    np.savez(target, **state)
  else:
    raise ValueError(f"output must end in .safetensors or .npz, got {target!r}")
  print(f"wrote {len(state)} tensors to {target}")


if __name__ == "__main__":
  main(sys.argv[1:])
