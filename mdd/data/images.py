"""Image decoding and fitting shared by every source: RGB uint8 [H, W, 3] at the data resolution.

`decode(data)` turns encoded bytes (JPEG, PNG, WebP, ...) into an upright RGB PIL image
(EXIF rotation applied, transparency composited over white). `fit(image, resolution, crop=...)`
scales the image so it covers the target size and crops it: `"center"` or, given an
`np.random.Generator`, a random window (the generator makes the choice reproducible). Scaling
is bicubic; an image smaller than the target is scaled up.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

CROPS = ("center", "random")


def size_of(resolution: int | Sequence[int]) -> tuple[int, int]:
  """(height, width) of `resolution` (an int is square)."""
  if isinstance(resolution, (int, np.integer)):
    height = width = int(resolution)
  else:
    height, width = (int(r) for r in resolution)
  if min(height, width) < 1:
    raise ValueError(f"resolution must be positive, got {resolution!r}")
  return height, width


def to_rgb(image: Image.Image) -> Image.Image:
  """Upright RGB: EXIF orientation applied, transparency composited over white."""
  image = ImageOps.exif_transpose(image)
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    return rgb
  return image.convert("RGB")


def decode(data: bytes) -> Image.Image:
  """Encoded image bytes -> upright RGB PIL image (raises on data that does not decode)."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return to_rgb(image)


def fit(image: Image.Image | np.ndarray, resolution: int | Sequence[int],
        crop: str | np.random.Generator = "center") -> np.ndarray:
  """`image` scaled to cover `resolution` and cropped to it: uint8 [H, W, 3].

  `crop`: "center", or an `np.random.Generator` for a random window (same generator state,
  same window).
  """
  height, width = size_of(resolution)
  if isinstance(image, np.ndarray):
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 image [H, W, 1|3|4], got {image.dtype} "
                       f"{list(image.shape)}")
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    image = to_rgb(Image.fromarray(image))
  src_w, src_h = image.size
  if (src_h, src_w) == (height, width):
    return np.asarray(image, np.uint8)
  # The largest window of the target's aspect inside the source, then one bicubic resample.
  crop_w = min(float(src_w), src_h * width / height)
  crop_h = min(float(src_h), src_w * height / width)
  if isinstance(crop, np.random.Generator):
    left, top = crop.random() * (src_w - crop_w), crop.random() * (src_h - crop_h)
  elif crop == "center":
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
  else:
    raise ValueError(f"crop must be one of {CROPS} (random needs a generator), got {crop!r}")
  out = image.resize((width, height), Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
  return np.asarray(out, np.uint8)


def load(path, resolution: int | Sequence[int],
         crop: str | np.random.Generator = "center") -> np.ndarray:
  """Reads and decodes the image file `path` (any epath-compatible path) and fits it."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return fit(decode(epath.Path(path).read_bytes()), resolution, crop)
