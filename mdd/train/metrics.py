"""Metric writers that work with and without TensorFlow.

With TensorFlow present, clu's default writer logs and writes TensorBoard event files. Without it
(the lent GPU image has none) metrics go to the log. Either way process 0 also appends every
scalar to `metrics.jsonl`, which the ablation scripts and tests read back; each row is flushed
as it is written, so a killed run loses at most the row being written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import numpy as np


class JsonlWriter:
  """Appends `{"step": s, name: value, ...}` lines to `<logdir>/metrics.jsonl`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step), "time": time.time()}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def write_images(self, step: int, images: Mapping[str, Any]):
    del step, images  # Images go to TensorBoard (or nowhere without TF).

  def flush(self):
    self._file.flush()

  def close(self):
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


class Writer:
  """Fans out to the writers of this platform; the interface the train loop uses."""

  def __init__(self, logdir: str, *, is_main: bool = True, tensorboard: bool = True):
    self._writers: list[Any] = []
    clu_writer = None
    if tensorboard and is_main and tensorflow_available():
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
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  records = []
  for index, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if index != len(lines) - 1:
        raise ValueError(f"{path}: line {index + 1} is not JSON") from None
  return records
