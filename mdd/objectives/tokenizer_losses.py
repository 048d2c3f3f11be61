"""Tokenizer losses: L1 + L2 reconstruction, an optional perceptual loss, PSNR.

The perceptual loss compares VGG16 features (LPIPS-style: channel-normalised activations after
relu1_2 ... relu5_3, squared differences averaged over space, optionally weighted by LPIPS'
linear heads). It never downloads anything: the weights come from a local file (.npz or
.safetensors) with torchvision's names `features.N.weight` [out, in, 3, 3] / `features.N.bias`
and, optionally, LPIPS heads `lin{i}.model.1.weight` [1, C, 1, 1]. It is off by default.

Quantizer losses (codebook, commitment, entropy) come from the quantizer's `aux["loss"]`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# torchvision VGG16 `features`: conv layer indices, and the ReLU outputs LPIPS taps
# (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) given by the conv index feeding them.
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_TAPS = (2, 7, 14, 21, 28)
_VGG16_POOL_AFTER = (2, 7, 14, 21)
# LPIPS' input scaling of [-1, 1] images.
_SHIFT = np.asarray([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.asarray([0.458, 0.448, 0.450], np.float32)


def reconstruction_losses(reconstruction: Array, target: Array, l1_weight: float = 1.0,
                          l2_weight: float = 1.0) -> dict[str, Array]:
  """{"l1", "mse", "loss" = l1_weight * l1 + l2_weight * mse} for float images in [-1, 1]."""
  diff = reconstruction.astype(jnp.float32) - target.astype(jnp.float32)
  l1 = jnp.mean(jnp.abs(diff))
  mse = jnp.mean(jnp.square(diff))
  return {"l1": l1, "mse": mse, "loss": l1_weight * l1 + l2_weight * mse}


def psnr_from_mse(mse: Array) -> Array:
  """PSNR in dB of images in [-1, 1] (peak-to-peak 2), i.e. the same as on [0, 1]."""
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def _load_weight_file(path: str) -> dict[str, np.ndarray]:
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"perceptual loss weights not found at {path!r} (set "
                            "tokenizer.loss.perceptual_weights to a local .npz/.safetensors file)")
  if path.endswith(".safetensors"):
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    return dict(safetensors_numpy.load_file(path))
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


class PerceptualLoss:
  """LPIPS-style VGG16 feature distance with frozen weights from a local file."""

  def __init__(self, path: str):
    raw = _load_weight_file(path)
    missing = [f"features.{i}.weight" for i in _VGG16_CONVS if f"features.{i}.weight" not in raw]
    if missing:
      raise ValueError(f"{path}: not VGG16 feature weights, missing {missing[:3]}...")
    # torch OIHW -> HWIO.
    self.convs = [(jnp.asarray(np.transpose(raw[f"features.{i}.weight"], (2, 3, 1, 0)),
                               jnp.float32),
                   jnp.asarray(raw[f"features.{i}.bias"], jnp.float32)) for i in _VGG16_CONVS]
    self.heads = None
    if all(f"lin{i}.model.1.weight" in raw for i in range(len(_VGG16_TAPS))):
      self.heads = [jnp.asarray(raw[f"lin{i}.model.1.weight"].reshape(-1), jnp.float32)
                    for i in range(len(_VGG16_TAPS))]

  def features(self, images: Array) -> list[Array]:
    h = (images.astype(jnp.float32) - _SHIFT) / _SCALE
    taps = []
    for index, (kernel, bias) in zip(_VGG16_CONVS, self.convs):
      h = jax.lax.conv_general_dilated(h, kernel, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.nn.relu(h + bias)
      if index in _VGG16_TAPS:
        taps.append(h)
      if index in _VGG16_POOL_AFTER:
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return taps

  def __call__(self, reconstruction: Array, target: Array) -> Array:
    """Mean over the batch of the summed per-layer distances (0 for identical images)."""
    total = 0.0
    for layer, (a, b) in enumerate(zip(self.features(reconstruction), self.features(target))):
      a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-10)
      b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-10)
      sq = jnp.square(a - b)
      per_position = sq @ self.heads[layer] if self.heads is not None else jnp.sum(sq, -1)
      total = total + jnp.mean(per_position)
    return total
