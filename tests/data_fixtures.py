"""Generated image-caption inputs for data tests: a folder + manifest and WebDataset tars.

`write_image_folder(root)` writes images of odd sizes and aspect ratios in several modes
(RGB and grayscale JPEG, grayscale, RGBA and palette PNG, an EXIF-rotated JPEG, a large image
the converter scales down), three corrupt files, a manifest line naming a missing file and one
bad manifest line; it returns what a reader should find. `write_webdataset(directory)` writes
tar shards of the same kind of images, with one key lacking a caption and one lacking an image.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


@dataclasses.dataclass
class Fixture:
  good: dict[str, str]      # key (manifest path or WebDataset key) -> caption, usable entries
  corrupt: list[str]        # keys whose image does not decode
  missing: list[str]        # keys whose file does not exist
  no_caption: list[str] = dataclasses.field(default_factory=list)
  no_image: list[str] = dataclasses.field(default_factory=list)
  bad_lines: int = 0        # manifest lines that are not usable JSON entries


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3]: a smooth gradient with noise (compresses like a photo, not like noise)."""
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  colour = rng.uniform(0, 255, (3, 3))
  image = colour[0] + colour[1] * x[..., None] + colour[2] * y[..., None] * 0.5
  image = image + rng.normal(0, 8, (height, width, 1))  # Luminance noise, like a photo.
  return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def exif_rotated_jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
  """A JPEG stored as [height, width] with EXIF orientation 6 (shown rotated: [width, height])."""
  exif = Image.Exif()
  exif[0x0112] = 6
  return encode(Image.fromarray(smooth_image(rng, height, width)), "JPEG", exif=exif)


def _good_images(rng: np.random.Generator) -> dict[str, bytes]:
  """File name -> encoded bytes of every kind of decodable image."""
  def rgb(height, width):
    return Image.fromarray(smooth_image(rng, height, width))

  gray = Image.fromarray(smooth_image(rng, 33, 47)[..., 0])
  rgba = np.concatenate([smooth_image(rng, 41, 29), rng.integers(0, 256, (41, 29, 1),
                                                                   dtype=np.uint8)], -1)
  palette = rgb(27, 61).convert("P", palette=Image.ADAPTIVE, colors=16)
  palette_transparent = rgb(30, 30).convert("P", palette=Image.ADAPTIVE, colors=8)
  return {
      "wide.jpg": encode(rgb(37, 101), "JPEG", quality=90),
      "tall.png": encode(rgb(95, 21), "PNG"),
      "tiny.png": encode(rgb(3, 5), "PNG"),
      "large.jpg": encode(rgb(150, 230), "JPEG", quality=90),
      "gray.jpg": encode(gray, "JPEG"),
      "gray.png": encode(gray, "PNG"),
      "rgba.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
      "palette.png": encode(palette, "PNG"),
      "palette_transparent.png": encode(palette_transparent, "PNG", transparency=0),
      "rotated.jpg": exif_rotated_jpeg(rng, 20, 44),
      "photo.webp": encode(rgb(40, 52), "WEBP"),
  }


def _corrupt_images(rng: np.random.Generator) -> dict[str, bytes]:
  truncated = encode(Image.fromarray(smooth_image(rng, 64, 64)), "JPEG")[:300]
  return {"noise.png": rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
          "truncated.jpg": truncated,
          "empty.jpg": b""}


def write_image_folder(root, seed: int = 0) -> Fixture:
  """Writes `root/manifest.jsonl` and `root/images/...`; returns the expected contents."""
  rng = np.random.default_rng(seed)
  root = str(root)
  os.makedirs(os.path.join(root, "images", "sub"), exist_ok=True)
  fixture = Fixture(good={}, corrupt=[], missing=[])
  lines = []
  for i, (name, data) in enumerate(_good_images(rng).items()):
    path = f"images/{'sub/' if i % 3 == 0 else ''}{name}"
    with open(os.path.join(root, path), "wb") as f:
      f.write(data)
    fixture.good[path] = f"picture {i}: {name.split('.')[0]} ünïcode"
    lines.append(json.dumps({"image": path, "caption": fixture.good[path], "source": "test"}))
  for name, data in _corrupt_images(rng).items():
    path = f"images/{name}"
    with open(os.path.join(root, path), "wb") as f:
      f.write(data)
    fixture.corrupt.append(path)
    lines.insert(len(lines) // 2, json.dumps({"image": path, "caption": "broken"}))
  fixture.missing.append("images/missing.jpg")
  lines.insert(3, json.dumps({"image": "images/missing.jpg", "caption": "gone"}))
  lines.insert(5, "{not json")
  lines.insert(7, "")  # Blank lines are ignored, not counted.
  fixture.bad_lines = 1
  with open(os.path.join(root, "manifest.jsonl"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return fixture


def _add(tar: tarfile.TarFile, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_webdataset(directory, num_shards: int = 2, seed: int = 0) -> Fixture:
  """Writes `directory/{i:05d}.tar` WebDataset shards; returns the expected contents."""
  rng = np.random.default_rng(seed)
  os.makedirs(str(directory), exist_ok=True)
  fixture = Fixture(good={}, corrupt=[], missing=[])
  good = list(_good_images(rng).items())
  corrupt = list(_corrupt_images(rng).items())
  for shard in range(num_shards):
    with tarfile.open(os.path.join(str(directory), f"{shard:05d}.tar"), "w") as tar:
      for i, (name, data) in enumerate(good):
        key = f"{shard:05d}{i:04d}"
        extension = name.split(".")[1]
        caption = f"shard {shard} picture {i} {name}"
        _add(tar, f"{key}.{extension}", data)
        if i % 2:  # Captions alternate between .txt and the "caption" field of .json.
          _add(tar, f"{key}.txt", caption.encode("utf-8"))
        else:
          _add(tar, f"{key}.json", json.dumps({"caption": caption, "url": f"http://x/{i}",
                                               "width": 1}).encode())
        fixture.good[key] = caption
      for j, (name, data) in enumerate(corrupt):
        key = f"{shard:05d}9{j:03d}"
        _add(tar, f"{key}.{name.split('.')[1]}", data)
        _add(tar, f"{key}.txt", b"broken")
        fixture.corrupt.append(key)
      key = f"{shard:05d}8000"
      _add(tar, f"{key}.jpg", good[0][1])
      _add(tar, f"{key}.json", json.dumps({"url": "http://x/no-caption"}).encode())
      fixture.no_caption.append(key)
      key = f"{shard:05d}8001"
      _add(tar, f"{key}.txt", b"a caption without an image")
      fixture.no_image.append(key)
  return fixture
