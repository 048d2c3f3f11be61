"""Input pipelines: random-access sources and one deterministic, resumable batch pipeline on grain.

A *source* is anything with `__len__` and `__getitem__(i) -> dict` of numpy values (ShapeGen,
a user folder, ArrayRecord shards, a TFDS dataset, token shards); a source may also offer
`get_batch(indices) -> dict` of stacked arrays, equal to stacking `source[i]`, which the
pipeline then uses (one vectorised gather instead of a Python call per example: token shards and
cached ShapeGen read a batch in about a millisecond). Sources must pickle (grain's worker
processes receive them) and reopen their files lazily.

`batch_dataset` / `batch_iterator` turn a source into per-process batches with grain:

* the example stream is the concatenation of epochs, each a permutation of the source drawn
  by grain from `(seed, epoch)` (or in order without shuffling);
* global batch `k` is stream positions `[k * G, (k + 1) * G)` with `G = batch_size *
  process_count`, and process `p` takes every `process_count`-th of them starting at `p`, so
  processes read disjoint examples and together exactly the global batch;
* batch `k` depends only on `(seed, k)`, so a pipeline started at step `k`, or one whose grain
  iterator state was restored there, yields what a run from 0 yields at step `k`.

Decoding runs on threads or in grain worker processes (`num_workers`), with the same batches
for any count. `make_source(data_cfg, split)` builds the configured source
(`mdd.data.sources`) and adds the byte-tokenized caption: `text_ids` int32 [max_len],
`text_len`, `text_truncated`. ShapeGen renders can be cached in a `.npy` memory map under
`data_cfg.cache_dir`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from typing import Any, Callable, Protocol, Sequence

from absl import flags
from absl import logging
import numpy as np

from mdd.data import palette
from mdd.data import shapes
from mdd.data import sources
from mdd.data import text as text_lib


Batch = dict[str, np.ndarray]


class RandomAccessSource(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...


def read_batch(source: RandomAccessSource, indices: np.ndarray) -> Batch:
  """The examples `indices` of `source`, stacked: `source.get_batch` when it has one."""
  if hasattr(source, "get_batch"):
    return source.get_batch(np.asarray(indices))
  return stack_examples([source[int(i)] for i in indices])


# ----------------------------------------------------------------------------------------------
# Sources.

# Bump when ShapeGen's output changes in a way the cache fingerprint (example 0) could miss.
_CACHE_VERSION = 1


class ShapeGenSource:
  """The first `num_examples` ShapeGen examples of a split, rendered on demand or from a cache.

  `source[i]` == `shapes.generate_example(seed, i, split, resolution, tag, noise_std)` where
  `tag` cycles through `tags` (all tags drawn at random when `tags` is empty). With
  `cache_dir`, all images are rendered once into `<cache_dir>/shapegen_<key>.npy` (+ `.jsonl`
  for texts) and memory-mapped.
  """

  def __init__(self, *, num_examples: int, seed: int = 0, split: str = "train",
               resolution: int | tuple[int, int] = 32, tags: Sequence[str] = (),
               cache_dir: str | None = None, num_workers: int = 0, noise_std: float = 0.0):
    if num_examples < 1:
      raise ValueError(f"ShapeGen num_examples must be >= 1, got {num_examples}")
    if split not in shapes.SPLITS:
      raise ValueError(f"ShapeGen split must be one of {shapes.SPLITS}, got {split!r}")
    unknown = [t for t in tags if t not in palette.TAGS]
    if unknown:
      raise ValueError(f"unknown ShapeGen tags {unknown}; expected some of {palette.TAGS}")
    self.num_examples = int(num_examples)
    if noise_std < 0:
      raise ValueError(f"ShapeGen noise_std must be >= 0, got {noise_std}")
    self.seed, self.split, self.tags = int(seed), split, tuple(tags)
    self.noise_std = float(noise_std)
    self.resolution = resolution if isinstance(resolution, int) else tuple(resolution)
    shapes.parse_resolution(self.resolution)  # Validates early, with a clear message.
    self._images = None
    self._texts = None
    if cache_dir:
      self._images, self._texts = self._load_or_build_cache(cache_dir, num_workers)

  def _generate(self, index: int) -> dict:
    tag = self.tags[index % len(self.tags)] if self.tags else None
    return shapes.generate_example(self.seed, index, self.split, self.resolution, tag=tag,
                                   noise_std=self.noise_std)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range for {self.num_examples} examples")
    if self._images is None:
      return self._generate(index)
    caption, tag, metadata = self._texts[index]
    return {"image": np.asarray(self._images[index]), "caption": caption, "tag": tag,
            "metadata": metadata}

  def get_batch(self, indices: np.ndarray) -> Batch:
    """Stacked examples; from the cache one gather, else rendered one by one."""
    indices = np.asarray(indices, np.int64)
    if indices.size and not (0 <= indices.min() and indices.max() < self.num_examples):
      raise IndexError(f"indices out of range for {self.num_examples} examples")
    if self._images is None:
      return stack_examples([self._generate(int(i)) for i in indices])
    texts = [self._texts[int(i)] for i in indices]
    return {"image": np.asarray(self._images[indices]),
            "caption": np.array([t[0] for t in texts]), "tag": np.array([t[1] for t in texts]),
            "metadata": np.array([t[2] for t in texts])}

  def _cache_key(self) -> str:
    first = self._generate(0)
    fingerprint = hashlib.sha256(first["image"].tobytes() + first["metadata"].encode())
    description = json.dumps([_CACHE_VERSION, self.seed, self.split, self.resolution,
                              self.num_examples, self.tags, fingerprint.hexdigest()]
                             + ([self.noise_std] if self.noise_std else []))
    return hashlib.sha256(description.encode()).hexdigest()[:16]

  def _load_or_build_cache(self, cache_dir: str, num_workers: int):
    base = os.path.join(cache_dir, f"shapegen_{self.split}_{self._cache_key()}")
    if not (os.path.exists(base + ".npy") and os.path.exists(base + ".jsonl")):
      os.makedirs(cache_dir, exist_ok=True)
      start = time.perf_counter()
      images, texts = self._render_all(num_workers)
      # Write under temporary names and rename: concurrent builders never see half a file.
      for suffix, write in ((".npy", lambda f: np.save(f, images)),
                            (".jsonl", lambda f: f.write("\n".join(
                                json.dumps(t) for t in texts).encode()))):
        handle, tmp = tempfile.mkstemp(dir=cache_dir, suffix=suffix)
        with os.fdopen(handle, "wb") as f:
          write(f)
        os.replace(tmp, base + suffix)
      logging.info("ShapeGen cache %s: %d images in %.1f s", base, self.num_examples,
                   time.perf_counter() - start)
    images = np.load(base + ".npy", mmap_mode="r")
    with open(base + ".jsonl", encoding="utf-8") as f:
      texts = [tuple(json.loads(line)) for line in f]
    if len(images) != self.num_examples or len(texts) != self.num_examples:
      raise ValueError(f"ShapeGen cache {base} is inconsistent; delete it and rerun")
    return images, texts

  def _render_all(self, num_workers: int):
    chunks = [range(i, min(i + 1024, self.num_examples))
              for i in range(0, self.num_examples, 1024)]
    if num_workers > 1:
      # Spawned, not forked: forking a process that runs JAX or threads is unsafe.
      context = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        parts = list(pool.map(_render_chunk, [(self, c) for c in chunks]))
    else:
      parts = [_render_chunk((self, c)) for c in chunks]
    images = np.concatenate([p[0] for p in parts])
    texts = [t for p in parts for t in p[1]]
    return images, texts

  def __getstate__(self):  # Worker processes only need the description, not the cache.
    state = dict(self.__dict__)
    state["_images"] = state["_texts"] = None
    return state


def _render_chunk(args) -> tuple[np.ndarray, list[tuple[str, str, str]]]:
  source, indices = args
  examples = [source._generate(i) for i in indices]  # pylint: disable=protected-access
  return (np.stack([e["image"] for e in examples]),
          [(e["caption"], e["tag"], e["metadata"]) for e in examples])


class TokenizedSource:
  """Adds `text_ids`, `text_len`, `text_truncated` for the `caption` of each example."""

  def __init__(self, source: RandomAccessSource, tokenizer: text_lib.ByteTokenizer):
    self.source, self.tokenizer = source, tokenizer

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    example = dict(self.source[index])
    ids, length, truncated = self.tokenizer.encode(example["caption"])
    example.update(text_ids=ids, text_len=np.int32(length), text_truncated=np.bool_(truncated))
    return example

  def get_batch(self, indices: np.ndarray) -> Batch:
    batch = read_batch(self.source, indices)
    batch.update(self.tokenizer.encode_batch([str(c) for c in batch["caption"].tolist()]))
    return batch


def _tags(data_cfg) -> tuple[str, ...]:
  tags = data_cfg.get("tags", "")
  if isinstance(tags, str):
    tags = [t.strip() for t in tags.split(",")]
  return tuple(t for t in tags if t)


def image_resolution(data_cfg) -> int | tuple[int, int]:
  """`resolution` (square) or (`resolution`, `width`) when `width` is set."""
  width = int(data_cfg.get("width", 0) or 0)
  return (int(data_cfg.resolution), width) if width else int(data_cfg.resolution)


def shapegen_from_config(data_cfg, split: str) -> ShapeGenSource:
  """The `shapes` entry of `mdd.data.sources.SOURCES`."""
  sizes = {"train": data_cfg.train_size, "validation": data_cfg.validation_size,
           "heldout": data_cfg.heldout_size}
  if split not in sizes:
    raise ValueError(f"ShapeGen split must be one of {tuple(sizes)}, got {split!r}")
  return ShapeGenSource(num_examples=int(sizes[split]), seed=int(data_cfg.seed), split=split,
                        resolution=image_resolution(data_cfg), tags=_tags(data_cfg),
                        cache_dir=data_cfg.get("cache_dir") or None,
                        num_workers=int(data_cfg.get("cache_workers", 0)),
                        noise_std=float(data_cfg.get("noise_std", 0.0)))


def make_source(data_cfg, split: str) -> RandomAccessSource:
  """The configured source for `split` (by name, `mdd.data.sources.SOURCES`) with tokenized
  captions."""
  kind = data_cfg.source
  if kind not in sources.SOURCES:
    raise ValueError(f"data.source must be one of {sorted(sources.SOURCES)}; got {kind!r}")
  source = sources.SOURCES[kind].resolve()(data_cfg, split)
  return TokenizedSource(source, text_lib.byte_tokenizer_from_config(data_cfg))


# ----------------------------------------------------------------------------------------------
# Batching.

def _stack(values: list) -> np.ndarray:
  if isinstance(values[0], (str, bytes)):
    return np.array(values)
  return np.stack([np.asarray(v) for v in values])


def stack_examples(examples: list[dict]) -> Batch:
  """Example dicts -> one dict of stacked arrays (strings become numpy string arrays)."""
  return {key: _stack([e[key] for e in examples]) for key in examples[0]}


def numeric_fields(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The fields that can go to devices (numbers and bools; drops captions and other text)."""
  return {k: v for k, v in batch.items()
          if isinstance(v, np.ndarray) and (np.issubdtype(v.dtype, np.number)
                                            or v.dtype == np.bool_)}


class _ReadBatch:
  """Index batch -> stacked example batch (+ `valid` with padding, + `transform`); a picklable
  callable, so grain worker processes can run it."""

  def __init__(self, source: RandomAccessSource, pad: bool,
               transform: Callable[[Batch], Batch] | None):
    self.source, self.pad, self.transform = source, pad, transform

  def __call__(self, indices: np.ndarray) -> Batch:
    indices = np.asarray(indices, np.int64)
    valid = indices >= 0
    batch = read_batch(self.source, np.where(valid, indices, 0))
    if self.pad:
      batch["valid"] = valid
    return self.transform(batch) if self.transform is not None else batch


def _pad_to(parent, length: int):
  """`parent` followed by -1 up to `length` elements (the padding of a finite stream)."""
  import grain  # pylint: disable=g-import-not-at-top

  class PadTo(grain.MapDataset):

    def __len__(self) -> int:
      return int(length)

    def __getitem__(self, index):
      if isinstance(index, slice):
        return self.slice(index)
      return self._parent[index] if index < len(self._parent) else -1

  return PadTo(parent)


def batch_dataset(source: RandomAccessSource, *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None, drop_remainder: bool = True,
                  transform: Callable[[Batch], Batch] | None = None):
  """This process's batches as a grain `MapDataset`: element `k` is its share of global batch `k`.

  The example stream is `range(len(source))`, shuffled per epoch by grain from `seed` (each
  epoch reseeded), repeated `num_epochs` times (None: forever). Global batch `k` is stream
  positions `[k * G, (k + 1) * G)` with `G = batch_size * process_count`; process `p` takes the
  positions `p, p + P, ...` of it, so processes read disjoint examples that together are the
  global batch, and batch `k` depends only on (`seed`, `k`) and the source.

  With finite `num_epochs` and `drop_remainder=False`, the last global batch is padded (with
  example 0) and every batch gets a bool `valid` [batch_size] field. (grain is imported here,
  not at the top: the TF-free accelerator images that only benchmark need not have it.)
  """
  import grain  # pylint: disable=g-import-not-at-top
  num_examples = len(source)
  if num_examples < 1:
    raise ValueError("the data source is empty")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} must be in [0, {process_count})")
  stream = grain.MapDataset.range(num_examples)
  if shuffle:
    stream = stream.shuffle(seed=int(seed) % 2**32)
  stream = stream.repeat(num_epochs)
  global_batch = batch_size * process_count
  pad = num_epochs is not None and not drop_remainder
  if pad:
    stream = _pad_to(stream, -(-len(stream) // global_batch) * global_batch)
  if num_epochs is not None and drop_remainder:
    stream = stream[:len(stream) // global_batch * global_batch]
  mine = stream[process_index::process_count]
  indices = mine.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
  return indices.map(_ReadBatch(source, pad, transform))


def batch_iterator(source: RandomAccessSource, *, batch_size: int, seed: int,
                   start_step: int = 0, process_index: int = 0, process_count: int = 1,
                   drop_remainder: bool = True, shuffle: bool = True,
                   num_epochs: int | None = None,
                   transform: Callable[[Batch], Batch] | None = None,
                   num_threads: int = 0, prefetch: int = 2,
                   num_workers: int = 0):
  """This process's batches (dicts of stacked numpy arrays) from global step `start_step` on.

  A grain iterator over `batch_dataset(...)[start_step:]`: `get_state()` / `set_state()` save
  and restore its position (the train loop keeps it in each checkpoint). Batches are read on
  `num_threads` threads (0: in the caller's thread) with `prefetch` batches buffered, in
  `num_workers` worker processes when > 0 (decoding runs there; same batches in the same order
  for any worker count). See `batch_dataset` for the arguments and the batch contents.
  """
  import grain  # pylint: disable=g-import-not-at-top
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  if num_workers < 0 or num_threads < 0:
    raise ValueError(f"num_workers={num_workers} and num_threads={num_threads} must be >= 0")
  dataset = batch_dataset(source, batch_size=batch_size, seed=seed,
                          process_index=process_index, process_count=process_count,
                          shuffle=shuffle, num_epochs=num_epochs,
                          drop_remainder=drop_remainder, transform=transform)
  dataset = dataset[start_step:]
  iterable = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=int(num_threads), prefetch_buffer_size=int(prefetch) if num_threads else 0))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (outside `app.run` too).
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(num_workers), per_worker_buffer_size=max(int(prefetch), 1)))
  return iter(iterable)


class MappedIterator:
  """`fn` applied to each batch of `iterator` (on the caller's thread), keeping the iterator's
  `get_state` / `set_state` (for work that cannot run in a data worker, e.g. encoding images
  with a model on the accelerator)."""

  def __init__(self, iterator, fn: Callable[[Batch], Batch]):
    self.iterator, self.fn = iterator, fn

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    return self.fn(next(self.iterator))

  def get_state(self):
    """The wrapped iterator's state; None for one without (a plain generator)."""
    get_state = getattr(self.iterator, "get_state", None)
    return None if get_state is None else get_state()

  def set_state(self, state) -> None:
    self.iterator.set_state(state)  # AttributeError for an iterator without a state.

  def close(self) -> None:
    if hasattr(self.iterator, "close"):
      self.iterator.close()


def num_steps_per_epoch(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Global steps in one pass over `num_examples` (rounded down)."""
  return num_examples // (batch_size * process_count)


def batches_from_config(data_cfg, split: str, *, batch_size: int, seed: int,
                        start_step: int = 0, process_index: int = 0, process_count: int = 1,
                        **kwargs):
  """`batch_iterator(make_source(data_cfg, split), ...)` with the config's loader settings."""
  kwargs.setdefault("num_threads", int(data_cfg.get("num_threads", 0)))
  kwargs.setdefault("prefetch", int(data_cfg.get("prefetch", 2)))
  kwargs.setdefault("num_workers", int(data_cfg.get("num_workers", 0)))
  return batch_iterator(make_source(data_cfg, split), batch_size=batch_size, seed=seed,
                        start_step=start_step, process_index=process_index,
                        process_count=process_count, **kwargs)
