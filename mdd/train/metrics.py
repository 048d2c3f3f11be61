"""Metric writers that work with and without TensorFlow, in local folders and on object stores.

With TensorFlow present, clu's default writer logs and writes TensorBoard event files. Without it
(the lent GPU image has none) metrics go to the log. Either way process 0 also appends every
scalar to `metrics.jsonl`, which the ablation scripts and tests read back.

In a local folder each row is flushed as it is written, so a killed run loses at most the row
being written. An object store (`gs://`) has no appending and shows an object only once it is
uploaded whole: there the writer keeps the file's rows (those of earlier runs included) and
uploads all of them again at most every `upload_every_s` seconds and on `flush`/`close`, so a
killed run loses at most that many seconds of rows.

TensorBoard event files are written by TensorFlow's own file system, which reaches an object
store only where etils.epath also uses it (`EPATH_USE_TF` not false); where the workdir is served
by gcsfs instead (no TensorFlow, or `EPATH_USE_TF=false`, as in the tests' emulator) a remote
logdir gets `metrics.jsonl` and log lines but no event files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import numpy as np

from mdd.utils import fileio


class JsonlWriter:
  """Appends `{"step": s, name: value, ...}` lines to `<logdir>/metrics.jsonl` (see the module
  docstring for object stores)."""

  def __init__(self, logdir: str, upload_every_s: float = 30.0):
    fileio.makedirs(logdir)
    self.path = os.path.join(logdir, "metrics.jsonl")
    self._remote = fileio.is_remote(self.path)
    if self._remote:
      self._text = fileio.read_text(self.path) if fileio.exists(self.path) else ""
      if self._text and not self._text.endswith("\n"):
        self._text += "\n"
      self._upload_every_s = float(upload_every_s)
      self._uploaded_at, self._pending = time.monotonic(), False
    else:
      self._file = fileio.path(self.path).open("a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step), "time": time.time()}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(record) + "\n"
    if not self._remote:
      self._file.write(line)
      self._file.flush()
      return
    self._text += line
    self._pending = True
    if time.monotonic() - self._uploaded_at >= self._upload_every_s:
      self.flush()

  def write_images(self, step: int, images: Mapping[str, Any]):
    del step, images  # Images go to TensorBoard (or nowhere without TF).

  def flush(self):
    if not self._remote:
      self._file.flush()
    elif self._pending:
      fileio.write_text_atomic(self.path, self._text)
      self._uploaded_at, self._pending = time.monotonic(), False

  def close(self):
    self.flush()
    if not self._remote:
      self._file.close()


class _LogWriter:
  """Logging-only writer, used when clu/TensorFlow are not importable."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    text = ", ".join(f"{k}={float(np.asarray(v)):.5g}" for k, v in sorted(scalars.items()))
    logging.info("[%d] %s", step, text)

  def write_images(self, step: int, images: Mapping[str, Any]):
    del step, images

  def flush(self):
    pass

  def close(self):
    pass


def tensorflow_available() -> bool:
  try:
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def tensorboard_reaches(logdir: str) -> bool:
  """Whether TensorFlow's file system writes where `logdir` is: any local folder; a URL only
  where etils.epath uses TensorFlow for it too (the rule of `etils.epath.gpath`), since
  otherwise the workdir is served by another client (gcsfs, perhaps pointed at an emulator)."""
  if not fileio.is_remote(logdir):
    return True
  return os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")


class Writer:
  """Fans out to the writers of this platform; the interface the train loop uses."""

  def __init__(self, logdir: str, *, is_main: bool = True, tensorboard: bool = True):
    self._writers: list[Any] = []
    clu_writer = None
    if tensorboard and is_main and tensorboard_reaches(logdir) and tensorflow_available():
      try:
        from clu import metric_writers  # pylint: disable=import-outside-toplevel
        clu_writer = metric_writers.create_default_writer(logdir, asynchronous=False)
      except ImportError:
        clu_writer = None
    self._writers.append(clu_writer if clu_writer is not None else _LogWriter())
    if is_main:
      self._writers.append(JsonlWriter(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    for w in self._writers:
      w.write_images(step, images)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def read_jsonl(path: str) -> list[dict]:
  """All records of a metrics.jsonl file (a last line cut by a kill is skipped)."""
  lines = [line for line in fileio.read_text(path).splitlines() if line.strip()]
  records = []
  for index, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if index != len(lines) - 1:
        raise ValueError(f"{path}: line {index + 1} is not JSON") from None
  return records
