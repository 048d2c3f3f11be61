"""Token shards: a split's tokenized examples in fixed-size .npz shards, read by index.

Layout: <tokens>/<split>/manifest.json and shard-00000.npz, shard-00001.npz, ... Shard `s`
holds examples [s * shard_size, (s + 1) * shard_size) of the split: `tokens` int32 [n, h, w]
(the image's token ids), `index` int64 [n], and every other field of the source's examples but
the image, stacked (strings as unicode arrays). `mdd.train.pretokenize` writes them;
`TokenShardSource` is the random-access reader (`len`, `[i]`) the loader batches from.

The folder may be local or a URL (`gs://`), read through `mdd.utils.fileio`. A shard is read
whole into memory the first time an example of it is asked for, and kept (`cache_shards`): an
`.npz` member cannot be memory-mapped, locally or remotely, so a remote shard costs one download
per process and nothing is cached on local disk.
"""

from __future__ import annotations

import collections
import os
import zipfile
from typing import Any

import jax
import numpy as np

from mdd.data import loader
from mdd.utils import fileio

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def shard_path(directory: str, shard: int) -> str:
  return os.path.join(directory, f"shard-{shard:05d}.npz")


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
    if not fileio.exists(path):
      raise FileNotFoundError(f"no token shards in {directory} (run --config.mode=pretokenize)")
    self.manifest = fileio.read_json(
        path, fix=f"delete {directory} and rerun --config.mode=pretokenize")
    self.directory = directory
    self.num_examples = int(self.manifest["num_examples"])
    self.shard_size = int(self.manifest["shard_size"])
    present = set(fileio.listdir(directory))
    missing = [s for s in range(int(self.manifest["num_shards"]))
               if os.path.basename(shard_path(directory, s)) not in present]
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
    path = shard_path(self.directory, shard)
    try:
      arrays = fileio.load_npz(path)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as e:
      raise ValueError(f"token shard {path} is corrupt ({type(e).__name__}: {e}); delete it "
                       "and rerun --config.mode=pretokenize to rewrite it") from None
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
    at `start_step` continues the stream exactly (see `mdd.data.loader.batch_iterator`).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
      raise ValueError(f"batch_size={batch_size} is not divisible by {process_count} processes")

    def numeric(batch):
      batch = loader.numeric_fields(batch)
      batch.pop("index", None)  # int64 bookkeeping, not model input.
      return batch

    return loader.batch_iterator(
        self, batch_size=batch_size // process_count, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count, shuffle=shuffle,
        num_epochs=num_epochs, transform=numeric)

  def __getstate__(self):  # Worker processes reopen the shards themselves.
    state = dict(self.__dict__)
    state["_cache"] = collections.OrderedDict()
    return state
