r"""Converts image-caption pairs to mdd's ArrayRecord shards (`mdd.data.records`).

  python -m mdd.data.convert --input=/data/my_pairs --output=/data/my_pairs_ar
  python -m mdd.data.convert --input='/data/laion/*.tar' --output=/data/laion_ar \
      --format=webdataset --num_workers=16 --shard_size=2000 --max_side=512

Inputs (`--format`, default `auto`: a directory with the manifest is a folder, else tar files):
* `folder`: `INPUT/manifest.jsonl`, one `{"image": relative path, "caption": str}` per line
  (the layout `mdd.data.folder` reads); other fields of a line are kept as record metadata.
* `webdataset`: uncompressed `.tar` shards (a directory of them, a glob or one file) whose
  members are grouped by key: `KEY.jpg|.jpeg|.png|.webp` plus the caption in `KEY.txt` or in
  the "caption" field of `KEY.json` (the rest of the JSON is kept as metadata).

Every image is decoded, made upright RGB (EXIF rotation, transparency over white), scaled down
so its short side is at most `--max_side` (never up) and re-encoded (JPEG quality 95, or PNG).
Entries that cannot be used are skipped and counted by kind: bad manifest line, missing file,
unreadable image, no image, no caption.

Output: `OUTPUT/train-00000-of-NNNNN.array_record` ... and `validation-...`, then
`OUTPUT/stats.json` (examples per split, skipped counts by kind with a few examples of each).
An example is in validation when the crc32 of its key (the manifest's image path, or the
WebDataset key) falls below `--validation_fraction` (the rule `mdd.data.folder` uses); examples
keep their input order and fill the shards `--shard_size` at a time, so the assignment depends
only on the input and the flags.

Resumable: shards are built in `--num_workers` spawned processes; each is written under a
temporary name, renamed when complete, and then recorded in `OUTPUT/_progress/NAME.json` with a
fingerprint of its inputs and settings. A rerun skips the shards whose record matches and writes
the rest, so an interrupted conversion finishes with the same bytes as an uninterrupted one.
`--max_shards` converts at most that many shards in one run (the rest on a rerun).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import posixpath
import re
import tarfile
import tempfile
import zlib
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
from PIL import Image
import tqdm

from mdd.data import images
from mdd.data import records

FORMATS = ("auto", "folder", "webdataset")
IMAGE_FORMATS = ("jpeg", "png")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PROGRESS_DIR = "_progress"
STATS = "stats.json"
_EXAMPLES_PER_KIND = 5  # skipped examples listed in stats.json per kind

# Kinds of skipped entries (the keys of stats.json's "skipped").
BAD_LINE = "bad manifest line"
MISSING = "missing file"
UNREADABLE = "unreadable image"
NO_IMAGE = "no image"
NO_CAPTION = "no caption"


class ConvertError(ValueError):
  """Bad input or output; the CLI prints the message as one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What shapes the output bytes (part of every shard's fingerprint)."""
  max_side: int = 512
  image_format: str = "jpeg"
  jpeg_quality: int = 95


@dataclasses.dataclass(frozen=True)
class Item:
  """One planned example: where its image bytes are and its caption."""
  key: str
  caption: str
  path: str          # the image file, or the tar file holding it
  offset: int = -1   # byte offset of the image in the tar (-1: the whole file at `path`)
  size: int = -1
  meta: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class ShardTask:
  split: str
  index: int
  count: int
  items: tuple[Item, ...]
  output: str
  settings: Settings

  @property
  def name(self) -> str:
    return records.shard_name(self.split, self.index, self.count)

  def fingerprint(self) -> str:
    description = json.dumps([records.VERSION, dataclasses.asdict(self.settings),
                              [dataclasses.asdict(item) for item in self.items]],
                             sort_keys=True)
    return hashlib.sha256(description.encode("utf-8")).hexdigest()


def in_validation(key: str, validation_fraction: float) -> bool:
  """The split rule: crc32 of the key below the fraction (as in `mdd.data.folder`)."""
  return zlib.crc32(key.encode("utf-8")) / 2**32 < validation_fraction


# ----------------------------------------------------------------------------------------------
# Planning: the examples of the input, in order, and the entries skipped up front.

Skip = tuple[str, str, str]  # (where, kind, detail)


def _plan_folder(root: epath.Path, manifest: str) -> tuple[list[Item], list[Skip]]:
  manifest_path = root / manifest
  if not manifest_path.is_file():
    raise ConvertError(f"no {manifest} in {os.fspath(root)} (expected JSON lines "
                       '{"image": relative path, "caption": str})')
  items, skipped = [], []
  for line_number, line in enumerate(manifest_path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    where = f"{manifest}:{line_number}"
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      skipped.append((where, BAD_LINE, "not valid JSON"))
      continue
    if (not isinstance(entry, dict) or not isinstance(entry.get("image"), str)
        or not isinstance(entry.get("caption"), str)):
      skipped.append((where, BAD_LINE, 'needs string fields "image" and "caption"'))
      continue
    meta = {k: v for k, v in entry.items() if k not in ("image", "caption")} or None
    items.append(Item(key=entry["image"], caption=entry["caption"],
                      path=os.fspath(root / entry["image"]), meta=meta))
  return items, skipped


def _find_tars(spec: str) -> list[str]:
  path = epath.Path(spec)
  if any(c in spec for c in "*?["):
    tars = records._glob(spec)  # pylint: disable=protected-access
  elif path.is_dir():
    tars = sorted(os.fspath(p) for p in path.glob("*.tar"))
  else:
    tars = [spec] if path.is_file() else []
  if not tars:
    raise ConvertError(f"no .tar files at {spec} (--format=webdataset reads a directory of "
                       "tar shards, a glob or one tar)")
  return tars


def _caption_of(group: dict[str, Any], key: str) -> tuple[str | None, dict | None, str]:
  """(caption, metadata, problem) of one WebDataset key's members."""
  meta = None
  if "json" in group:
    try:
      meta = json.loads(group["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      return None, None, f"{key}.json is not valid JSON"
    if not isinstance(meta, dict):
      meta = {"json": meta}
  caption = None
  if "txt" in group:
    try:
      caption = group["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
      return None, None, f"{key}.txt is not UTF-8"
  elif meta is not None and isinstance(meta.get("caption"), str):
    caption = meta["caption"]
  if meta is not None:
    meta = {k: v for k, v in meta.items() if k != "caption"} or None
  if caption is None:
    return None, None, "neither a .txt nor a .json with a string 'caption'"
  return caption, meta, ""


def plan_tar(path: str) -> tuple[list[Item], list[Skip]]:
  """The examples of one WebDataset tar (headers and caption members read; images located)."""
  groups: dict[str, dict[str, Any]] = {}
  try:
    with epath.Path(path).open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for member in tar:
        directory, base = posixpath.split(member.name)
        stem, dot, extension = base.partition(".")
        if not member.isfile() or not dot or base.startswith("."):
          continue
        key, extension = posixpath.join(directory, stem), extension.lower()
        group = groups.setdefault(key, {})
        if extension in IMAGE_EXTENSIONS and "image" not in group:
          group["image"] = (member.offset_data, member.size)
        elif extension in ("txt", "json"):
          group[extension] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError) as error:
    raise ConvertError(f"cannot read tar {path}: {type(error).__name__}: {error}") from error
  items, skipped = [], []
  for key, group in groups.items():
    if "image" not in group:
      skipped.append((f"{path}:{key}", NO_IMAGE, "no .jpg/.jpeg/.png/.webp member"))
      continue
    caption, meta, problem = _caption_of(group, key)
    if caption is None:
      skipped.append((f"{path}:{key}", NO_CAPTION, problem))
      continue
    offset, size = group["image"]
    items.append(Item(key=key, caption=caption, path=path, offset=offset, size=size, meta=meta))
  return items, skipped


# ----------------------------------------------------------------------------------------------
# Building one shard (runs in a worker process).

def prepare_image(data: bytes, settings: Settings) -> tuple[bytes, str, tuple[int, int],
                                                              tuple[int, int]]:
  """Encoded bytes -> (re-encoded bytes, encoding, (width, height), original (width, height)).

  Upright RGB, short side scaled down to `settings.max_side` (never up). Large JPEGs are
  decoded at a reduced DCT scale first (`draft`), which is much faster and still at least as
  large as the target.
  """
  with Image.open(io.BytesIO(data)) as image:
    width, height = image.size
    if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that transpose.
      original = (height, width)
    else:
      original = (width, height)
    scale = settings.max_side / min(width, height) if settings.max_side else 1.0
    if scale < 1 and image.format == "JPEG":
      image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    image.load()
    image = images.to_rgb(image)
  if scale < 1:
    short = settings.max_side
    if original[0] <= original[1]:
      size = (short, max(1, round(original[1] * short / original[0])))
    else:
      size = (max(1, round(original[0] * short / original[1])), short)
    image = image.resize(size, Image.BICUBIC)
  buffer = io.BytesIO()
  if settings.image_format == "jpeg":
    image.save(buffer, "JPEG", quality=settings.jpeg_quality)
  else:
    image.save(buffer, "PNG")
  return buffer.getvalue(), settings.image_format, image.size, original


def _describe(error: Exception) -> str:
  """The error as text without object addresses (done records must not vary between runs)."""
  return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(error).__name__}: {error}")


def _read_bytes(item: Item, open_tars: dict[str, Any]) -> bytes:
  if item.offset < 0:
    return epath.Path(item.path).read_bytes()
  if item.path not in open_tars:
    open_tars[item.path] = epath.Path(item.path).open("rb")
  f = open_tars[item.path]
  f.seek(item.offset)
  data = f.read(item.size)
  if len(data) != item.size:
    raise OSError(f"tar ends inside the member ({len(data)} of {item.size} bytes)")
  return data


def _write_atomically(path: epath.Path, write_local):
  """Calls `write_local(local_path)` and moves the result to `path` only once it is complete."""
  if "://" not in os.fspath(path):
    temporary = path.parent / (path.name + ".tmp")
    write_local(os.fspath(temporary))
    os.replace(temporary, path)
    return
  handle, temporary = tempfile.mkstemp(suffix=".tmp")
  os.close(handle)
  try:
    write_local(temporary)
    epath.Path(temporary).copy(path, overwrite=True)
  finally:
    os.remove(temporary)


def _encoded_records(task: ShardTask, skipped: list[Skip], counts: collections.Counter):
  """Yields the records of `task`'s items that decode; appends the others to `skipped`."""
  open_tars: dict[str, Any] = {}
  try:
    for item in task.items:
      try:
        data = _read_bytes(item, open_tars)
      except FileNotFoundError:
        skipped.append((item.key, MISSING, "file not found"))
        continue
      except OSError as error:
        skipped.append((item.key, UNREADABLE, _describe(error)))
        continue
      try:
        image_bytes, encoding, size, original = prepare_image(data, task.settings)
      except Exception as error:  # pylint: disable=broad-except  (any decoder failure)
        skipped.append((item.key, UNREADABLE, _describe(error)))
        continue
      counts["downscaled"] += size != original
      yield records.encode_record(
          image_bytes, item.caption, encoding=encoding, width=size[0], height=size[1],
          original_width=original[0], original_height=original[1], key=item.key,
          meta=item.meta)
  finally:
    for f in open_tars.values():
      f.close()


def build_shard(task: ShardTask) -> dict[str, Any]:
  """Writes one shard (streaming its records) and then its done record; returns the latter."""
  skipped: list[Skip] = []
  counts = collections.Counter()
  output = epath.Path(task.output)
  _write_atomically(output / task.name, lambda path: counts.update(
      records=records.write_records(path, _encoded_records(task, skipped, counts))))
  done = {"shard": task.name, "fingerprint": task.fingerprint(),
          "num_records": counts["records"], "num_downscaled": counts["downscaled"],
          "skipped": [list(s) for s in skipped]}
  text = json.dumps(done, sort_keys=True, indent=1)
  _write_atomically(output / PROGRESS_DIR / f"{task.name}.json",
                    lambda path: epath.Path(path).write_text(text))
  return done


def _finished(task: ShardTask) -> dict[str, Any] | None:
  """The done record of `task` if its shard is complete and was built from the same inputs."""
  output = epath.Path(task.output)
  done_path = output / PROGRESS_DIR / f"{task.name}.json"
  if not (done_path.exists() and (output / task.name).exists()):
    return None
  try:
    done = json.loads(done_path.read_text())
  except json.JSONDecodeError:
    return None
  return done if done.get("fingerprint") == task.fingerprint() else None


# ----------------------------------------------------------------------------------------------
# The conversion.

def _detect_format(spec: str, manifest: str) -> str:
  """"folder" for a directory with the manifest, "webdataset" for tar files."""
  path = epath.Path(spec)
  if any(c in spec for c in "*?["):
    return "webdataset"
  if not path.exists():
    raise ConvertError(f"--input={spec} does not exist")
  if path.is_dir() and (path / manifest).is_file():
    return "folder"
  if path.is_dir() and not any(path.glob("*.tar")):
    raise ConvertError(f"{spec} has neither {manifest} (a folder) nor .tar files (WebDataset)")
  return "webdataset"


def _shard_tasks(items: Sequence[Item], output: str, settings: Settings, shard_size: int,
                 validation_fraction: float) -> list[ShardTask]:
  by_split = {split: [] for split in records.SPLITS}
  for item in items:
    by_split["validation" if in_validation(item.key, validation_fraction) else "train"].append(
        item)
  tasks = []
  for split, split_items in by_split.items():
    count = math.ceil(len(split_items) / shard_size)
    for index in range(count):
      chunk = tuple(split_items[index * shard_size:(index + 1) * shard_size])
      tasks.append(ShardTask(split, index, count, chunk, output, settings))
  return tasks


def _check_output(output: epath.Path, tasks: Sequence[ShardTask]):
  """Refuses an output directory that holds shards of a different conversion."""
  planned = {task.name for task in tasks}
  if not output.exists():
    return
  foreign = sorted(p.name for p in output.glob(f"*{records.SUFFIX}") if p.name not in planned)
  if foreign:
    raise ConvertError(f"{os.fspath(output)} holds shards of another conversion (e.g. "
                       f"{foreign[0]}); use a new --output or delete them")


def _summary(plan_skipped: Sequence[Skip], dones: Sequence[dict], tasks: Sequence[ShardTask],
             input_spec: str, input_format: str, settings: Settings,
             validation_fraction: float) -> dict[str, Any]:
  skipped = [tuple(s) for s in plan_skipped] + [tuple(s) for d in dones for s in d["skipped"]]
  by_kind = collections.Counter(kind for _, kind, _ in skipped)
  examples = collections.defaultdict(list)
  for where, kind, detail in skipped:
    if len(examples[kind]) < _EXAMPLES_PER_KIND:
      examples[kind].append(f"{where}: {detail}")
  per_split = {split: 0 for split in records.SPLITS}
  shards = {split: 0 for split in records.SPLITS}
  for task, done in zip(tasks, dones):
    per_split[task.split] += done["num_records"]
    shards[task.split] += 1
  return {"format_version": records.VERSION, "input": input_spec, "input_format": input_format,
          "settings": dataclasses.asdict(settings), "validation_fraction": validation_fraction,
          "num_examples": per_split, "num_shards": shards,
          "num_downscaled": sum(d["num_downscaled"] for d in dones),
          "num_skipped": len(skipped), "skipped": dict(sorted(by_kind.items())),
          "skipped_examples": dict(sorted(examples.items()))}


def convert(input_spec: str, output: str, *, input_format: str = "auto",
            manifest: str = "manifest.jsonl", num_workers: int = 0, shard_size: int = 1000,
            max_side: int = 512, validation_fraction: float = 0.005,
            image_format: str = "jpeg", jpeg_quality: int = 95, max_shards: int = 0,
            progress: bool = True) -> dict[str, Any]:
  """Converts `input_spec` into shards under `output`; returns the stats (see module doc).

  `num_workers` <= 1 builds shards in this process. With `max_shards` > 0 at most that many
  shards are built now; the returned stats then have "complete": False and no stats.json is
  written (a rerun goes on).
  """
  if input_format not in FORMATS:
    raise ConvertError(f"--format must be one of {FORMATS}, got {input_format!r}")
  if image_format not in IMAGE_FORMATS:
    raise ConvertError(f"--image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
  if shard_size < 1 or max_side < 0 or not 1 <= jpeg_quality <= 100:
    raise ConvertError(f"need --shard_size >= 1, --max_side >= 0, --jpeg_quality in [1, 100]; "
                       f"got {shard_size}, {max_side}, {jpeg_quality}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ConvertError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
  settings = Settings(max_side=max_side, image_format=image_format, jpeg_quality=jpeg_quality)
  if input_format == "auto":
    input_format = _detect_format(input_spec, manifest)
  output_path = epath.Path(output)

  pool = None
  if num_workers > 1:  # Spawned, not forked: the caller may hold threads or JAX.
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"))
  try:
    if input_format == "folder":
      if not epath.Path(input_spec).is_dir():
        raise ConvertError(f"--input={input_spec} is not a directory (--format=folder)")
      items, plan_skipped = _plan_folder(epath.Path(input_spec), manifest)
    else:
      tars = _find_tars(input_spec)
      planned = pool.map(plan_tar, tars) if pool else map(plan_tar, tars)
      items, plan_skipped = [], []
      for tar_items, tar_skipped in planned:
        items.extend(tar_items)
        plan_skipped.extend(tar_skipped)
    if not items:
      raise ConvertError(f"no usable examples in {input_spec} ({len(plan_skipped)} skipped, "
                         f"first: {plan_skipped[0] if plan_skipped else 'none'})")

    tasks = _shard_tasks(items, os.fspath(output_path), settings, shard_size,
                         validation_fraction)
    _check_output(output_path, tasks)
    (output_path / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
    dones: list[dict | None] = [_finished(task) for task in tasks]
    todo = [i for i, done in enumerate(dones) if done is None]
    if max_shards > 0:
      todo = todo[:max_shards]
    logging.info("convert %s: %d examples planned in %d shards; %d already done, %d to build",
                 input_spec, len(items), len(tasks), len(tasks) - dones.count(None), len(todo))
    bar = tqdm.tqdm(total=len(items), unit="img", desc="convert", disable=not progress,
                    initial=sum(len(t.items) for t, d in zip(tasks, dones) if d is not None))
    with bar:
      if pool is not None and len(todo) > 1:
        futures = {pool.submit(build_shard, tasks[i]): i for i in todo}
        for future in concurrent.futures.as_completed(futures):
          dones[futures[future]] = future.result()
          bar.update(len(tasks[futures[future]].items))
      else:
        for i in todo:
          dones[i] = build_shard(tasks[i])
          bar.update(len(tasks[i].items))
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)

  finished = [d for d in dones if d is not None]
  if len(finished) < len(tasks):
    logging.info("convert: %d of %d shards done; rerun to build the rest", len(finished),
                 len(tasks))
    return {"complete": False, "num_shards_done": len(finished), "num_shards": len(tasks)}
  stats = _summary(plan_skipped, dones, tasks, input_spec, input_format, settings,
                   validation_fraction)
  if not sum(stats["num_examples"].values()):
    raise ConvertError(f"no image of {input_spec} could be decoded ({stats['num_skipped']} "
                       f"skipped: {stats['skipped']})")
  text = json.dumps(stats, indent=2, sort_keys=True) + "\n"
  _write_atomically(output_path / STATS, lambda path: epath.Path(path).write_text(text))
  return dict(stats, complete=True)


# ----------------------------------------------------------------------------------------------
# Command line.

def _define_flags():
  """The CLI's flags (defined only when run as a program, so importing this module adds none)."""
  flags.DEFINE_string("input", None, "folder with manifest.jsonl, or a directory / glob / file "
                      "of WebDataset .tar shards")
  flags.DEFINE_string("output", None, "directory for the ArrayRecord shards")
  flags.DEFINE_enum("format", "auto", FORMATS, "input layout (auto: a directory with the "
                    "manifest is a folder, anything else WebDataset)")
  flags.DEFINE_string("manifest", "manifest.jsonl", "manifest file name (folder)")
  flags.DEFINE_integer("num_workers", os.cpu_count() or 1,
                       "processes building shards (<= 1: this process)")
  flags.DEFINE_integer("shard_size", 1000, "examples per shard (before skips)")
  flags.DEFINE_integer("max_side", 512, "scale images down so the short side is at most this "
                       "(0 = keep the size)")
  flags.DEFINE_float("validation_fraction", 0.005,
                     "share of examples (by key hash) in the validation split")
  flags.DEFINE_enum("image_format", "jpeg", IMAGE_FORMATS, "how the stored images are encoded")
  flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the stored images")
  flags.DEFINE_integer("max_shards", 0, "build at most this many shards now (0 = all; a rerun "
                       "goes on)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f.input or not f.output:
    raise SystemExit("error: --input and --output are required")
  try:
    stats = convert(f.input, f.output, input_format=f.format, manifest=f.manifest,
                    num_workers=f.num_workers, shard_size=f.shard_size, max_side=f.max_side,
                    validation_fraction=f.validation_fraction, image_format=f.image_format,
                    jpeg_quality=f.jpeg_quality, max_shards=f.max_shards)
  except ConvertError as error:
    raise SystemExit(f"error: {error}") from None
  if not stats["complete"]:
    print(f"{stats['num_shards_done']} of {stats['num_shards']} shards done; rerun to finish")
    return
  print(f"{f.output}: {stats['num_examples']} examples in {stats['num_shards']} shards; "
        f"skipped {stats['num_skipped']} {stats['skipped'] or ''}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
