r"""Pretokenization: encode a dataset split into token shards once, read them by index later.

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=DIR --config.mode=pretokenize

Layout: DIR/tokens/<split>/manifest.json and shard-00000.npz, shard-00001.npz, ... Shard `s`
holds examples [s * shard_size, (s + 1) * shard_size) of the split: `tokens` int32 [n, h, w]
(the image's token ids), `index` int64 [n], and every other field of the source's examples
but the image, stacked: text (`caption`, `tag`, `metadata` as a JSON string) as unicode arrays,
numbers (`text_ids`, `text_len`, ... from the tokenized-caption source) as they are.

Resumable and multi-process safe by construction: shards have fixed contents, process p of P
writes the shards s with s % P == p, and each shard is written to a temporary file and renamed
into place, so a shard either exists complete or not at all. A rerun skips existing shards, so
an interrupted run neither duplicates nor drops examples. `TokenShardSource` is the
random-access reader (`len`, `[i]`) the data pipeline batches from.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
from typing import Any, Sequence

import jax
import numpy as np

from mdd import fileio

MANIFEST = "manifest.json"
_FORMAT_VERSION = 1


def shard_path(directory: str, shard: int) -> str:
  return os.path.join(directory, f"shard-{shard:05d}.npz")


def _check_or_write_manifest(directory: str, manifest: dict):
  path = os.path.join(directory, MANIFEST)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      existing = json.load(f)
    keys = ("num_examples", "shard_size", "num_shards", "token_shape", "vocab_size")
    changed = {k: (existing.get(k), manifest[k]) for k in keys if existing.get(k) != manifest[k]}
    if changed:
      raise ValueError(f"{directory} holds token shards of another setting {changed} "
                       "(old, new); delete the folder or pick another workdir")
    return
  fileio.write_json_atomic(path, manifest)


def make_encode_fn(model):
  """jit(params, images uint8 [B, H, W, 3]) -> ids int32 [B, h, w]."""
  return jax.jit(lambda params, images: model.apply({"params": params}, images,
                                                    method="encode"))


def pretokenize_split(model, params, source, out_dir: str, *, shard_size: int = 1024,
                      batch_size: int = 64, process_index: int = 0, process_count: int = 1,
                      max_shards: int | None = None, encode_fn=None) -> list[int]:
  """Encodes `source` into shards under `out_dir`; returns the shard numbers written now.

  Args:
    model, params: the tokenizer and its (unboxed) params.
    source: random-access source of dicts with `image` uint8 [H, W, 3] and optionally
      `caption`, `tag`, `metadata`.
    out_dir: the split's token folder.
    shard_size: examples per shard (fixed: it defines which examples a shard holds).
    batch_size: images per encoder call (the last one is padded, so one compile serves all).
    process_index, process_count: this process writes shards s with s % count == index.
    max_shards: stop after writing this many shards (None = all); lets tests interrupt a run.
    encode_fn: optional prebuilt `make_encode_fn(model)`.
  """
  if shard_size < 1 or batch_size < 1:
    raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  num_examples = len(source)
  if num_examples < 1:
    raise ValueError("pretokenize: the source is empty")
  first = np.asarray(source[0]["image"])
  f = model.downsample_factor
  token_shape = [first.shape[0] // f, first.shape[1] // f]
  num_shards = -(-num_examples // shard_size)
  os.makedirs(out_dir, exist_ok=True)
  _check_or_write_manifest(out_dir, {
      "version": _FORMAT_VERSION, "num_examples": num_examples, "shard_size": shard_size,
      "num_shards": num_shards, "token_shape": token_shape, "vocab_size": model.num_codes,
      "image_shape": list(first.shape)})
  # Temporary files of this process slot's earlier, interrupted run are garbage (the shard is
  # redone). Other slots' files are left alone: their writers may still be running.
  for stale in glob.glob(os.path.join(out_dir, "shard-*.npz.tmp-*")):
    shard = int(os.path.basename(stale)[len("shard-"):len("shard-") + 5])
    if shard % process_count == process_index:
      try:
        os.remove(stale)
      except FileNotFoundError:
        pass
  encode_fn = encode_fn or make_encode_fn(model)
  written = []
  for shard in range(process_index, num_shards, process_count):
    path = shard_path(out_dir, shard)
    if os.path.exists(path):
      continue
    if max_shards is not None and len(written) >= max_shards:
      break
    indices = np.arange(shard * shard_size, min((shard + 1) * shard_size, num_examples))
    examples = [source[int(i)] for i in indices]
    images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
    ids = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      real = len(chunk)
      if real < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, 0)])
      ids.append(np.asarray(jax.device_get(encode_fn(params, chunk)))[:real])
    fields = {"tokens": np.concatenate(ids).astype(np.int32), "index": indices.astype(np.int64)}
    for key in ("caption", "tag", "metadata"):
      fields[key] = np.asarray([str(e.get(key, "")) for e in examples], dtype=np.str_)
    for key, value in examples[0].items():
      if key not in fields and key != "image":
        values = [e[key] for e in examples]
        fields[key] = (np.asarray([str(v) for v in values], dtype=np.str_)
                       if isinstance(value, (str, bytes)) else np.stack(values))
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **fields)
    os.replace(tmp, path)
    written.append(shard)
    logging.info("pretokenize: wrote %s (%d examples)", path, len(indices))
  return written


class TokenShardSource:
  """Random-access reader of a split's token shards: `len(src)`, `src[i]` -> dict.

  Items: `tokens` int32 [h, w], `index` (position in the original split), `caption`, `tag`,
  `metadata`, and whatever else the shards stored (`text_ids`, `text_len`, ...).
  `get_batch(indices)` gathers a whole batch with one fancy index per shard touched.

  Keeps the `cache_shards` most recently used shards in memory; 0 (the default) keeps every
  shard read so far. Shuffled batches touch nearly every shard, so a cache smaller than the
  split re-reads a compressed shard per example (measured: 1.2 ms per example at 20 shards with
  4 cached, ~8 µs with all cached); token shards are small (100k examples of 16x16 tokens and
  64 text bytes: ~130 MB), so keeping them all is the right default.
  """

  def __init__(self, directory: str, split: str | None = None, cache_shards: int = 0):
    if split is not None:
      directory = os.path.join(directory, split)
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
      raise FileNotFoundError(f"no token shards in {directory} (run --config.mode=pretokenize)")
    with open(path, encoding="utf-8") as f:
      self.manifest = json.load(f)
    self.directory = directory
    self.num_examples = int(self.manifest["num_examples"])
    self.shard_size = int(self.manifest["shard_size"])
    missing = [s for s in range(int(self.manifest["num_shards"]))
               if not os.path.exists(shard_path(directory, s))]
    if missing:
      raise ValueError(f"{directory}: pretokenization incomplete, {len(missing)} of "
                       f"{self.manifest['num_shards']} shards missing (e.g. {missing[:3]}); "
                       "rerun --config.mode=pretokenize to finish it")
    self._cache: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()
    self._cache_shards = int(cache_shards) if int(cache_shards) > 0 else None

  @property
  def token_shape(self) -> tuple[int, int]:
    return tuple(self.manifest["token_shape"])

  @property
  def vocab_size(self) -> int:
    return int(self.manifest["vocab_size"])

  def __len__(self) -> int:
    return self.num_examples

  def _shard(self, shard: int) -> dict[str, np.ndarray]:
    if shard in self._cache:
      self._cache.move_to_end(shard)
      return self._cache[shard]
    with np.load(shard_path(self.directory, shard)) as data:
      arrays = {k: data[k] for k in data.files}
    self._cache[shard] = arrays
    if self._cache_shards is not None and len(self._cache) > self._cache_shards:
      self._cache.popitem(last=False)
    return arrays

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} token examples")
    arrays = self._shard(index // self.shard_size)
    row = index % self.shard_size
    item = {}
    for key, values in arrays.items():
      value = values[row]
      item[key] = str(value) if values.dtype.kind == "U" else value
    item["index"] = int(item["index"])
    return item

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples `indices`, stacked (strings as numpy unicode arrays), in that order."""
    indices = np.asarray(indices, np.int64)
    if indices.size and not (0 <= indices.min() and indices.max() < self.num_examples):
      raise IndexError(f"indices out of range for {self.num_examples} token examples")
    shards, rows = np.divmod(indices, self.shard_size)
    out: dict[str, np.ndarray] = {}
    for shard in np.unique(shards):
      where = np.flatnonzero(shards == shard)
      for key, values in self._shard(int(shard)).items():
        if key not in out:
          out[key] = np.empty((len(indices),) + values.shape[1:], values.dtype)
        elif values.dtype.kind == "U" and values.dtype.itemsize > out[key].dtype.itemsize:
          out[key] = out[key].astype(values.dtype)  # A wider string field in this shard.
        out[key][where] = values[rows[where]]
    return out

  def batches(self, batch_size: int, start_step: int = 0, *, seed: int = 0,
              shuffle: bool = True, num_epochs: int | None = None,
              process_index: int | None = None, process_count: int | None = None):
    """This process's numeric batches (`tokens`, `text_ids`, `text_len`, ...) from `start_step`.

    `batch_size` is the global batch; each of the `process_count` processes (default: JAX's)
    yields its `batch_size // process_count` share. Deterministic in (seed, step), so resuming
    at `start_step` continues the stream exactly (see `mdd.data.pipeline.batch_iterator`).
    """
    from mdd.data import pipeline  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} is not divisible by {process_count} processes")

    def numeric(batch):
      batch = pipeline.numeric_fields(batch)
      batch.pop("index", None)  # int64 bookkeeping, not model input.
      return batch

    return pipeline.batch_iterator(
        self, batch_size=batch_size // process_count, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count, shuffle=shuffle,
        num_epochs=num_epochs, transform=numeric)

  def __getstate__(self):  # Worker processes reopen the shards themselves.
    state = dict(self.__dict__)
    state["_cache"] = collections.OrderedDict()
    return state


def tokens_dir(workdir: str, split: str) -> str:
  return os.path.join(workdir, "tokens", split)


def run(config, workdir: str, splits: Sequence[str] | None = None) -> None:
  """`--config.mode=pretokenize`: encodes `config.tokenizer.pretokenize.splits` with the
  trained tokenizer in DIR/tokenizer into DIR/tokens/<split> (see `tokens_dir`)."""
  from mdd.data import pipeline  # pylint: disable=g-import-not-at-top
  from mdd.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  model, params, _ = tokenizer_lib.load_tokenizer(workdir)
  cfg = config.tokenizer.pretokenize
  splits = list(splits or cfg.splits)
  encode_fn = make_encode_fn(model)
  for split in splits:
    source = pipeline.make_source(config.data, split)
    out_dir = tokens_dir(workdir, split)
    pretokenize_split(model, params, source, out_dir, shard_size=int(cfg.shard_size),
                      batch_size=int(cfg.batch_size), process_index=jax.process_index(),
                      process_count=jax.process_count(), encode_fn=encode_fn)
