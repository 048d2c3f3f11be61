"""Input pipelines: sources, per-process sharding, deterministic shuffling, resumption."""

import json
import os

import numpy as np
import pytest

from mdd import defaults
from mdd.data import loader
from mdd.data import shapes


class IndexSource:
  """Example i is {"index": i, "image": ...}: lets tests see which examples a batch holds."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"index": np.int64(i), "image": np.full((2, 2, 3), i % 256, np.uint8),
            "caption": f"example {i}"}


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_epochs_cover_the_source_and_reshuffle():
  source = IndexSource(48)
  batches = _take(loader.batch_iterator(source, batch_size=8, seed=3), 12)
  first = np.concatenate([b["index"] for b in batches[:6]])
  second = np.concatenate([b["index"] for b in batches[6:]])
  assert sorted(first) == list(range(48)) and sorted(second) == list(range(48))
  assert not np.array_equal(first, second)  # A new order each epoch.
  assert not np.array_equal(first, np.arange(48))
  again = _take(loader.batch_iterator(source, batch_size=8, seed=3), 12)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["index"], b["index"])
  other = next(loader.batch_iterator(source, batch_size=8, seed=4))
  assert not np.array_equal(other["index"], batches[0]["index"])
  ordered = next(loader.batch_iterator(source, batch_size=8, seed=3, shuffle=False))
  np.testing.assert_array_equal(ordered["index"], np.arange(8))
  assert batches[0]["caption"].tolist() == [f"example {i}" for i in batches[0]["index"]]
  assert batches[0]["image"].shape == (8, 2, 2, 3) and batches[0]["image"].dtype == np.uint8


def test_processes_read_disjoint_parts_of_the_global_batch():
  source = IndexSource(37)  # Not a multiple of the batch: batches straddle epochs.
  single = _take(loader.batch_iterator(source, batch_size=12, seed=1), 10)
  shards = [_take(loader.batch_iterator(source, batch_size=4, seed=1, process_index=p,
                                          process_count=3), 10) for p in range(3)]
  for step in range(10):
    parts = [shards[p][step]["index"] for p in range(3)]
    assert all(len(part) == 4 for part in parts)
    for p in range(3):  # Process p holds every third example of the global batch.
      np.testing.assert_array_equal(parts[p], single[step]["index"][p::3])
    if step * 12 // 37 == (step * 12 + 11) // 37:  # Within one epoch: all distinct.
      assert len(set(np.concatenate(parts).tolist())) == 12


def test_iterator_state_resumes_exactly_through_json():
  source = IndexSource(23)
  kwargs = dict(batch_size=4, seed=9)
  from_zero = _take(loader.batch_iterator(source, **kwargs), 14)
  for start in (0, 5):
    iterator = loader.batch_iterator(source, start_step=start, **kwargs)
    _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # As the checkpoint stores it.
    restored = loader.batch_iterator(source, start_step=start, **kwargs)
    restored.set_state(state)
    for step in range(start + 3, start + 8):
      np.testing.assert_array_equal(next(restored)["index"], from_zero[step]["index"])
  mapped = loader.MappedIterator(loader.batch_iterator(source, **kwargs),
                                 lambda b: {"twice": b["index"] * 2})
  _take(mapped, 2)
  again = loader.MappedIterator(loader.batch_iterator(source, **kwargs), lambda b: b)
  again.set_state(mapped.get_state())
  np.testing.assert_array_equal(next(mapped)["twice"], next(again)["index"] * 2)


def test_resuming_gives_the_same_batches():
  source = IndexSource(50)
  for process_index in (0, 1):
    kwargs = dict(batch_size=6, seed=7, process_index=process_index, process_count=2)
    from_zero = _take(loader.batch_iterator(source, **kwargs), 15)
    for start in (1, 4, 9, 14):
      resumed = next(loader.batch_iterator(source, start_step=start, **kwargs))
      np.testing.assert_array_equal(resumed["index"], from_zero[start]["index"])


def test_finite_epochs_padding_threads_and_transform():
  source = IndexSource(10)
  dropped = list(loader.batch_iterator(source, batch_size=4, seed=0, num_epochs=2))
  assert len(dropped) == 5 and "valid" not in dropped[0]
  padded = list(loader.batch_iterator(source, batch_size=3, seed=0, num_epochs=1,
                                        drop_remainder=False))
  assert len(padded) == 4 and padded[-1]["valid"].tolist() == [True, False, False]
  seen = np.concatenate([b["index"][b["valid"]] for b in padded])
  assert sorted(seen.tolist()) == list(range(10))
  inline = _take(loader.batch_iterator(source, batch_size=4, seed=5), 7)
  threaded = _take(loader.batch_iterator(source, batch_size=4, seed=5, num_threads=3,
                                           prefetch=3), 7)
  for a, b in zip(inline, threaded):
    np.testing.assert_array_equal(a["index"], b["index"])
  doubled = next(loader.batch_iterator(
      source, batch_size=4, seed=5, transform=lambda b: dict(b, index=b["index"] * 2)))
  np.testing.assert_array_equal(doubled["index"], inline[0]["index"] * 2)
  # A batch larger than the source spans several epochs, each a permutation.
  big = next(loader.batch_iterator(source, batch_size=35, seed=1))["index"]
  for epoch in range(3):
    assert sorted(big[epoch * 10:(epoch + 1) * 10].tolist()) == list(range(10))
  with pytest.raises(ValueError, match="process_index"):
    next(loader.batch_iterator(source, batch_size=4, seed=0, process_index=2,
                                 process_count=2))
  with pytest.raises(ValueError, match="batch_size"):
    next(loader.batch_iterator(source, batch_size=0, seed=0))


def test_shapes_source_batches_and_cache(tmp_path, check_get_batch):
  cfg = defaults.data_config()
  cfg.train_size, cfg.resolution, cfg.max_text_len = 40, 32, 24
  source = loader.make_source(cfg, "train")
  example = source[5]
  expected = shapes.generate_example(0, 5, "train", 32)
  np.testing.assert_array_equal(example["image"], expected["image"])
  assert example["caption"] == expected["caption"]
  batch = next(loader.batch_iterator(source, batch_size=8, seed=0))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["text_ids"].shape == (8, 24) and batch["text_ids"].dtype == np.int32
  assert batch["text_len"].dtype == np.int32 and batch["tag"].shape == (8,)
  assert all(json.loads(m)["prompt"] == c for m, c in zip(batch["metadata"], batch["caption"]))
  assert set(loader.numeric_fields(batch)) == {"image", "text_ids", "text_len",
                                                 "text_truncated"}

  cfg.cache_dir = str(tmp_path / "cache")
  cached = loader.make_source(cfg, "train")
  files = sorted(os.listdir(cfg.cache_dir))
  assert len(files) == 2 and files[1].endswith(".npy")
  for i in (0, 5, 39):
    np.testing.assert_array_equal(cached[i]["image"], source[i]["image"])
    assert cached[i]["metadata"] == source[i]["metadata"]
    np.testing.assert_array_equal(cached[i]["text_ids"], source[i]["text_ids"])
  # Batched reads (one gather from the cache, or rendering) equal stacking the examples, in
  # order, duplicates included; the iterator uses them, threaded or not.
  for src in (source, cached):
    check_get_batch(src, [39, 0, 5, 5, 17])
  with pytest.raises(IndexError):
    cached.get_batch(np.array([40]))
  inline = next(loader.batch_iterator(cached, batch_size=8, seed=2, start_step=3))
  threaded = next(loader.batch_iterator(cached, batch_size=8, seed=2, start_step=3,
                                          num_threads=2))
  uncached = next(loader.batch_iterator(source, batch_size=8, seed=2, start_step=3))
  for key in ("image", "text_ids", "caption"):
    np.testing.assert_array_equal(inline[key], threaded[key])
    np.testing.assert_array_equal(inline[key], uncached[key])
  stamp = os.path.getmtime(os.path.join(cfg.cache_dir, files[1]))
  loader.make_source(cfg, "train")  # Reuses the cache.
  assert os.path.getmtime(os.path.join(cfg.cache_dir, files[1])) == stamp
  cfg.resolution = 48  # A different resolution is a different cache.
  loader.make_source(cfg, "train")
  assert len(os.listdir(cfg.cache_dir)) == 4
  cfg.resolution, cfg.noise_std = 32, 12.0  # So is pixel noise, which the cache keeps.
  noisy = loader.make_source(cfg, "train")
  assert len(os.listdir(cfg.cache_dir)) == 6
  np.testing.assert_array_equal(
      noisy[5]["image"], shapes.generate_example(0, 5, "train", 32, noise_std=12.0)["image"])
  assert noisy[5]["caption"] == source[5]["caption"]
  cfg.resolution, cfg.noise_std = 48, 0.0

  heldout = loader.make_source(cfg, "heldout")
  assert len(heldout) == cfg.heldout_size
  cfg.tags, cfg.cache_dir, cfg.width = "counting,colors", "", 64
  tagged = loader.make_source(cfg, "validation")
  assert [tagged[i]["tag"] for i in range(4)] == ["counting", "colors"] * 2
  assert tagged[0]["image"].shape == (48, 64, 3)
  for bad, match in ((dict(source="imagenet"), "data.source"), (dict(tags="spatial"), "tags")):
    with pytest.raises(ValueError, match=match):
      loader.make_source(_with(defaults.data_config(), **bad), "train")
  with pytest.raises(ValueError, match="split"):
    loader.make_source(defaults.data_config(), "test")


def _with(cfg, **fields):
  for key, value in fields.items():
    setattr(cfg, key, value)
  return cfg
