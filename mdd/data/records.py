"""mdd's ArrayRecord shards of image-caption pairs: the record format, a writer and a source.

Record layout, version 1 (one ArrayRecord record per example; little-endian):

  bytes 0-3    magic b"MDDR"
  byte  4      format version (uint8), currently 1
  bytes 5-8    header length N (uint32)
  bytes 9-9+N  header: UTF-8 JSON object
                 "caption":  str
                 "encoding": "jpeg" | "png" | "webp" (how the image bytes are encoded)
                 "width", "height": int, size of the stored image (upright, after any downscale)
                 "original_width", "original_height": int, size before the converter's
                     downscale (equal to width/height when it did not scale)
                 "key": str, where the example came from (a manifest path, a WebDataset key)
                 "meta": optional JSON object of extra fields from the input
  bytes 9+N-   the encoded image (an upright RGB image), to the end of the record

A reader rejects another magic or a newer version with a clear error. Shards are written with
`group_size:1` (random access reads one record) and without compression (the images are
already compressed). `python -m mdd.data.convert` writes them as
`{split}-{i:05d}-of-{n:05d}.array_record`.

`ArrayRecordSource(paths, resolution, crop, seed)` reads shards by random access:
`source[i]` -> {"image": uint8 [H, W, 3], "caption": str, "key": str}. Images are decoded and
fitted with `mdd.data.images` ("center" crop, or a "random" window drawn from
`np.random.default_rng([seed, i])`, so the same (seed, index) always gives the same crop). A
record that fails to decode is replaced by the next readable index, deterministically, and
counted (`stats()`, per process). The source pickles without its open files (grain worker
processes reopen them lazily).

Paths go through `etils.epath`; a `gs://` path is passed to ArrayRecord unchanged (its 0.8.6
reader has a native GCS backend; reading from a bucket needs credentials and network).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import threading
from typing import Any, Iterable, Sequence

from absl import logging
from array_record.python import array_record_module
from etils import epath
import numpy as np

from mdd.data import images

MAGIC = b"MDDR"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")  # magic, version, header length
ENCODINGS = ("jpeg", "png", "webp")
SPLITS = ("train", "validation")
SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1,uncompressed"
# Random access: no read-ahead (as grain's ArrayRecordDataSource opens its readers).
READER_OPTIONS = "readahead_buffer_size:0"
_SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d+)-of-(?P<count>\d+)" +
                         re.escape(SUFFIX) + "$")


def shard_name(split: str, index: int, count: int) -> str:
  """`train-00003-of-00012.array_record`."""
  return f"{split}-{index:05d}-of-{count:05d}{SUFFIX}"


# ----------------------------------------------------------------------------------------------
# The record format.

@dataclasses.dataclass(frozen=True)
class Record:
  """One decoded record: the header fields and the still-encoded image."""
  image_bytes: bytes
  caption: str
  encoding: str
  width: int
  height: int
  original_width: int
  original_height: int
  key: str = ""
  meta: dict[str, Any] | None = None


def encode_record(image_bytes: bytes, caption: str, *, encoding: str, width: int, height: int,
                  original_width: int | None = None, original_height: int | None = None,
                  key: str = "", meta: dict[str, Any] | None = None) -> bytes:
  """One record's bytes (layout in the module docstring)."""
  if encoding not in ENCODINGS:
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
  if not isinstance(caption, str):
    raise ValueError(f"caption must be a str, got {type(caption).__name__}")
  header = {"caption": caption, "encoding": encoding, "width": int(width),
            "height": int(height),
            "original_width": int(width if original_width is None else original_width),
            "original_height": int(height if original_height is None else original_height),
            "key": key}
  if meta:
    header["meta"] = meta
  header_bytes = json.dumps(header, ensure_ascii=False, sort_keys=True).encode("utf-8")
  return _PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + bytes(image_bytes)


def decode_record(data: bytes) -> Record:
  """The fields of a record written by `encode_record` (raises ValueError on anything else)."""
  data = bytes(data)
  if len(data) < _PREFIX.size:
    raise ValueError(f"record too short ({len(data)} bytes)")
  magic, version, header_length = _PREFIX.unpack_from(data)
  if magic != MAGIC:
    raise ValueError(f"not an mdd image record (magic {magic!r}, expected {MAGIC!r})")
  if version > VERSION:
    raise ValueError(f"record format version {version} is newer than this reader's {VERSION}; "
                     "update mdd")
  end = _PREFIX.size + header_length
  if end > len(data):
    raise ValueError(f"record header runs past the record ({end} > {len(data)} bytes)")
  try:
    header = json.loads(data[_PREFIX.size:end].decode("utf-8"))
    return Record(image_bytes=data[end:], caption=header["caption"],
                  encoding=header["encoding"], width=int(header["width"]),
                  height=int(header["height"]),
                  original_width=int(header["original_width"]),
                  original_height=int(header["original_height"]),
                  key=header.get("key", ""), meta=header.get("meta"))
  except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
    raise ValueError(f"bad record header: {type(error).__name__}: {error}") from error


class RecordWriter:
  """Writes records to one ArrayRecord shard; a context manager.

  `path` must be a local path or one ArrayRecord opens itself (`gs://`).
  """

  def __init__(self, path: epath.PathLike):
    self.path = os.fspath(path)
    self.num_records = 0
    self._writer = array_record_module.ArrayRecordWriter(self.path, WRITER_OPTIONS)
    if not self._writer.ok():
      raise OSError(f"cannot write ArrayRecord file {self.path}")

  def write(self, record: bytes):
    self._writer.write(record)
    self.num_records += 1

  def close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> RecordWriter:
    return self

  def __exit__(self, *exc_info):
    self.close()


def write_records(path: epath.PathLike, records: Iterable[bytes]) -> int:
  """Writes `records` (encoded) to the shard `path`; returns how many."""
  with RecordWriter(path) as writer:
    for record in records:
      writer.write(record)
    return writer.num_records


# ----------------------------------------------------------------------------------------------
# Reading.

def _glob(pattern: str) -> list[str]:
  """Files matching `pattern` (wildcards in any component after the first), sorted."""
  parts = pattern.split("/")
  first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
  base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
  rest = "/".join(parts[first:])
  return sorted(os.fspath(p) for p in epath.Path(base).glob(rest))


def resolve_paths(paths_or_glob: str | epath.PathLike | Sequence[epath.PathLike]) -> list[str]:
  """Shard paths from a path, a glob, a comma list of either, or a sequence of them.

  Globs expand in sorted order; a plain path must exist. Raises ValueError when nothing matches.
  """
  if isinstance(paths_or_glob, (str, os.PathLike)):
    items = [p.strip() for p in os.fspath(paths_or_glob).split(",")]
  else:
    items = [os.fspath(p) for p in paths_or_glob]
  resolved = []
  for item in (i for i in items if i):
    if any(c in item for c in "*?["):
      matches = _glob(item)
      if not matches:
        raise ValueError(f"no ArrayRecord shards match {item!r}")
      resolved.extend(matches)
    else:
      if not epath.Path(item).exists():
        raise ValueError(f"ArrayRecord shard {item} does not exist")
      resolved.append(item)
  if not resolved:
    raise ValueError(f"no ArrayRecord shards in {paths_or_glob!r}")
  return resolved


def split_shards(directory: epath.PathLike, split: str) -> list[str]:
  """The complete set of `{split}-*-of-N.array_record` shards the converter wrote in `directory`.

  Raises ValueError when there are none or when some of the N are missing (a conversion that
  has not finished).
  """
  if split not in SPLITS:
    raise ValueError(f"ArrayRecord split must be one of {SPLITS}, got {split!r}")
  directory = epath.Path(directory)
  found = {}
  for path in directory.glob(f"{split}-*{SUFFIX}"):
    match = _SHARD_NAME.match(path.name)
    if match and match["split"] == split:
      found[path.name] = (int(match["index"]), int(match["count"]))
  if not found:
    raise ValueError(f"no {split}-*{SUFFIX} shards in {os.fspath(directory)}")
  counts = {count for _, count in found.values()}
  if len(counts) != 1:
    raise ValueError(f"{os.fspath(directory)} mixes {split} shards of different conversions "
                     f"(-of- counts {sorted(counts)}); keep one set")
  (count,) = counts
  if len(found) != count:
    raise ValueError(f"{os.fspath(directory)} has {len(found)} of {count} {split} shards; is "
                     "the conversion finished? (rerun python -m mdd.data.convert to complete it)")
  return [os.fspath(directory / name) for name in sorted(found)]


class ArrayRecordSource:
  """Random access to the records of a list of shards, decoded and fitted to `resolution`.

  `source[i]` -> {"image": uint8 [H, W, 3], "caption": str, "key": str}.
  """

  def __init__(self, paths_or_glob, resolution: int | Sequence[int], crop: str = "center",
               seed: int = 0):
    if crop not in images.CROPS:
      raise ValueError(f"crop must be one of {images.CROPS}, got {crop!r}")
    self.resolution = images.size_of(resolution)
    self.crop, self.seed = crop, int(seed)
    self.paths = resolve_paths(paths_or_glob)
    counts = []
    for path in self.paths:
      reader = self._open(path)
      counts.append(reader.num_records())
      reader.close()
    self._ends = np.cumsum(counts)
    if not len(self):
      raise ValueError(f"the ArrayRecord shards {self.paths} hold no records")
    self._readers: list[Any] = [None] * len(self.paths)
    self._lock = threading.Lock()
    self._num_fallbacks = 0

  @staticmethod
  def _open(path: str):
    reader = array_record_module.ArrayRecordReader(path, READER_OPTIONS,
                                                   file_reader_buffer_size=32768)
    if not reader.ok():
      raise ValueError(f"cannot open ArrayRecord file {path} (missing or not ArrayRecord)")
    return reader

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def read_record(self, index: int) -> bytes:
    """The raw bytes of record `index` (in [0, len))."""
    shard = int(np.searchsorted(self._ends, index, side="right"))
    position = index - (int(self._ends[shard - 1]) if shard else 0)
    reader = self._readers[shard]
    if reader is None:
      with self._lock:  # Opened on first use, also after unpickling in a worker process.
        if self._readers[shard] is None:
          self._readers[shard] = self._open(self.paths[shard])
        reader = self._readers[shard]
    return reader.read([position])[0]

  def _example(self, index: int, rng_index: int) -> dict:
    record = decode_record(self.read_record(index))
    image = images.decode(record.image_bytes)
    crop = (np.random.default_rng([self.seed, rng_index]) if self.crop == "random"
            else "center")
    return {"image": images.fit(image, self.resolution, crop), "caption": record.caption,
            "key": record.key}

  def __getitem__(self, index: int) -> dict:
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for {n} examples")
    index %= n
    for step in range(n):
      try:
        return self._example((index + step) % n, index)
      except Exception as error:  # pylint: disable=broad-except
        with self._lock:
          self._num_fallbacks += 1
        logging.warning("ArrayRecordSource: record %d does not decode (%s: %s); using the next "
                        "one.", (index + step) % n, type(error).__name__, error)
    raise ValueError(f"no record of {self.paths} decodes")

  def stats(self) -> dict[str, int]:
    """{"num_examples", "num_fallbacks"} (fallbacks counted in this process)."""
    with self._lock:
      return {"num_examples": len(self), "num_fallbacks": self._num_fallbacks}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"] = [None] * len(self.paths)
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


def from_config(data_cfg, split: str) -> ArrayRecordSource:
  """The `arrayrecord` entry of `mdd.data.sources.SOURCES`.

  `data.records`: a directory written by `python -m mdd.data.convert` (the split's complete set
  of `{split}-*.array_record` shards), or a glob or comma list of shards, of which those named
  `{split}-*` are read. `data.crop`: "center" or "random" (the train split only; other splits
  are centre-cropped). `data.seed` seeds the random crops.
  """
  from mdd.data import loader  # pylint: disable=g-import-not-at-top  (loader imports sources)
  spec = str(data_cfg.get("records", "") or "")
  if not spec:
    raise ValueError("data.records must name ArrayRecord shards (a directory from "
                     "python -m mdd.data.convert, a glob or a comma list) for source=arrayrecord")
  if split not in SPLITS:
    raise ValueError(f"ArrayRecord split must be one of {SPLITS}, got {split!r}")
  if "," not in spec and not any(c in spec for c in "*?[") and epath.Path(spec).is_dir():
    paths = split_shards(spec, split)
  else:
    paths = [p for p in resolve_paths(spec) if epath.Path(p).name.startswith(f"{split}-")]
    if not paths:
      raise ValueError(f"none of the shards data.records={spec!r} is named {split}-*; name "
                       f"them {split}-*{SUFFIX}")
  crop = str(data_cfg.get("crop", "center") or "center")
  if crop not in images.CROPS:
    raise ValueError(f"data.crop must be one of {images.CROPS}, got {crop!r}")
  return ArrayRecordSource(paths, loader.image_resolution(data_cfg),
                           crop=crop if split == "train" else "center",
                           seed=int(data_cfg.get("seed", 0)))
