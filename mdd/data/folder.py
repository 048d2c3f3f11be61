"""User data: a folder of images with a `manifest.jsonl` of captions, as a random-access source.

Layout: `ROOT/manifest.jsonl`, one JSON object per line, `{"image": "relative/path.png",
"caption": "..."}`; image paths are relative to ROOT. Every image is decoded and fitted by
`mdd.data.images` (RGB, transparency over white, EXIF rotation applied, centre crop to the
target aspect, bicubic resize to the target resolution), uint8 [H, W, 3].

Bad data never crashes a job: manifest lines that are not valid JSON or lack the fields, missing
files and images that do not decode are skipped and counted (`stats()`, `skipped`, one warning
with the totals). With `verify_images` every image is decoded once up front, so the source only
holds good ones; an image that still fails later (e.g. the file changed) is replaced by the next
good index, deterministically, and counted.

`split`: "train" or "validation"; an entry belongs to validation when a hash of its image path
falls below `validation_fraction`, so the split is stable when the manifest grows or is reordered.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import zlib
from typing import Sequence

from absl import logging

from mdd.data import images
from mdd.data import loader
from mdd.utils import pickling

MANIFEST = "manifest.jsonl"


def _in_validation(path: str, validation_fraction: float) -> bool:
  return zlib.crc32(path.encode("utf-8")) / 2**32 < validation_fraction


class FolderSource(pickling.FreshLockOnUnpickle):
  """Random access to the good (image, caption) pairs of a folder + manifest.

  `source[i]` -> {"image": uint8 [H, W, 3], "caption": str, "path": str (relative)}.
  """

  def __init__(self, root: str, *, resolution: int | Sequence[int] = 64,
               manifest: str = MANIFEST, split: str = "train", validation_fraction: float = 0.0,
               verify_images: bool = True, num_threads: int = 4):
    if split not in ("train", "validation"):
      raise ValueError(f"folder split must be 'train' or 'validation', got {split!r}")
    if not 0.0 <= validation_fraction < 1.0:
      raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    manifest_path = os.path.join(root, manifest)
    if not os.path.isfile(manifest_path):
      raise ValueError(f"no manifest at {manifest_path} (expected JSON lines "
                       '{"image": relative path, "caption": str})')
    self.root = root
    self.resolution = images.size_of(resolution)
    self.skipped: list[tuple[str, str]] = []  # (manifest line or path, reason)
    self._num_fallbacks = 0
    self._lock = threading.Lock()

    entries = []
    with open(manifest_path, encoding="utf-8") as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        entry = self._parse_line(line, line_number)
        if entry is None:
          continue
        if _in_validation(entry[0], validation_fraction) == (split == "validation"):
          entries.append(entry)
    if verify_images:
      entries = self._verified(entries, num_threads)
    self._entries = entries
    if self.skipped:
      logging.warning("FolderSource %s: skipped %d manifest entries (first: %s)", root,
                      len(self.skipped), self.skipped[0])
    if not entries:
      raise ValueError(f"no usable images for split {split!r} in {manifest_path} "
                       f"({len(self.skipped)} skipped)")

  def _parse_line(self, line: str, line_number: int) -> tuple[str, str] | None:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      self.skipped.append((f"line {line_number}", "not valid JSON"))
      return None
    if (not isinstance(record, dict) or not isinstance(record.get("image"), str)
        or not isinstance(record.get("caption"), str)):
      self.skipped.append((f"line {line_number}", 'needs string fields "image" and "caption"'))
      return None
    if not os.path.isfile(os.path.join(self.root, record["image"])):
      self.skipped.append((record["image"], "file not found"))
      return None
    return record["image"], record["caption"]

  def _verified(self, entries, num_threads):
    """Keeps the entries whose image decodes (decoding runs on `num_threads` threads)."""
    def check(entry):
      try:
        images.load(os.path.join(self.root, entry[0]), self.resolution)
        return None
      except Exception as error:  # pylint: disable=broad-except
        return f"unreadable image: {type(error).__name__}: {error}"
    with concurrent.futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
      problems = list(pool.map(check, entries))
    good = []
    for entry, problem in zip(entries, problems):
      if problem is None:
        good.append(entry)
      else:
        self.skipped.append((entry[0], problem))
    return good

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> dict:
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    for step in range(len(self)):
      path, caption = self._entries[(index + step) % len(self)]
      try:
        image = images.load(os.path.join(self.root, path), self.resolution)
      except Exception as error:  # pylint: disable=broad-except
        with self._lock:
          self._num_fallbacks += 1
        logging.warning("FolderSource: %s failed to load (%s); using the next image.", path, error)
        continue
      return {"image": image, "caption": caption, "path": path}
    raise ValueError(f"no image in {self.root} can be read any more")

  def caption(self, index: int) -> str:
    """The manifest caption of example `index` (no image is read; evaluation prompts)."""
    if not -len(self) <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    return self._entries[index][1]

  def stats(self) -> dict[str, int]:
    """{"num_examples", "num_skipped", "num_fallbacks"} (fallbacks: failures after start-up;
    counted per process, so a data worker's own count stays in the worker)."""
    with self._lock:
      return {"num_examples": len(self), "num_skipped": len(self.skipped),
              "num_fallbacks": self._num_fallbacks}


def from_config(data_cfg, split: str) -> FolderSource:
  """The `folder` entry of `mdd.data.sources.SOURCES`."""
  if not data_cfg.folder:
    raise ValueError("data.folder must name a directory with manifest.jsonl for source=folder")
  return FolderSource(
      data_cfg.folder, resolution=loader.image_resolution(data_cfg),
      manifest=data_cfg.get("manifest", "manifest.jsonl"),
      split=split, validation_fraction=float(data_cfg.get("validation_fraction", 0.0)),
      verify_images=bool(data_cfg.get("verify_images", True)))
