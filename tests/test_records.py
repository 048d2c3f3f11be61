"""mdd's ArrayRecord format and source: round trip, reads equal direct decoding, crops, pickling."""

import pickle

import numpy as np
from PIL import Image
import pytest

import data_fixtures
from mdd import defaults
from mdd.data import images
from mdd.data import loader
from mdd.data import records


def _jpeg(rng, height, width):
  return data_fixtures.encode(Image.fromarray(data_fixtures.smooth_image(rng, height, width)),
                              "JPEG")


def _shards(tmp_path, sizes, rng, prefix="train"):
  """Writes shards of `sizes` records; returns (paths, [(jpeg bytes, caption)] in order)."""
  paths, examples = [], []
  for shard, size in enumerate(sizes):
    path = tmp_path / records.shard_name(prefix, shard, len(sizes))
    shard_examples = [(_jpeg(rng, 20 + i, 30 + 2 * i), f"{prefix} {shard}/{i}")
                      for i in range(size)]
    records.write_records(path, [
        records.encode_record(data, caption, encoding="jpeg", width=30 + 2 * i, height=20 + i,
                              key=caption)
        for i, (data, caption) in enumerate(shard_examples)])
    paths.append(str(path))
    examples += shard_examples
  return paths, examples


def test_record_round_trip_and_bad_records():
  data = b"\xff\xd8 not really a jpeg"
  encoded = records.encode_record(data, "a cat ✓", encoding="jpeg", width=7, height=5,
                                  original_width=70, original_height=50, key="k/1",
                                  meta={"url": "http://x", "score": 0.5})
  assert encoded[:4] == records.MAGIC and encoded[4] == records.VERSION
  record = records.decode_record(encoded)
  assert record == records.Record(image_bytes=data, caption="a cat ✓", encoding="jpeg", width=7,
                                  height=5, original_width=70, original_height=50, key="k/1",
                                  meta={"url": "http://x", "score": 0.5})
  plain = records.decode_record(records.encode_record(b"x", "", encoding="png", width=1,
                                                      height=2))
  assert (plain.original_width, plain.original_height, plain.meta) == (1, 2, None)
  with pytest.raises(ValueError, match="not an mdd image record"):
    records.decode_record(b"JUNK" + encoded[4:])
  with pytest.raises(ValueError, match="newer"):
    records.decode_record(encoded[:4] + bytes([records.VERSION + 1]) + encoded[5:])
  with pytest.raises(ValueError, match="runs past"):
    records.decode_record(encoded[:20])
  with pytest.raises(ValueError, match="too short"):
    records.decode_record(b"MDD")
  with pytest.raises(ValueError, match="encoding"):
    records.encode_record(data, "x", encoding="gif", width=1, height=1)


def test_source_reads_equal_direct_decoding_across_shards(tmp_path):
  paths, examples = _shards(tmp_path, [3, 1, 4], np.random.default_rng(0))
  source = records.ArrayRecordSource(str(tmp_path / "train-*.array_record"), (12, 16))
  assert source.paths == paths and len(source) == 8
  for i, (data, caption) in enumerate(examples):
    example = source[i]
    assert example["caption"] == caption and example["key"] == caption
    np.testing.assert_array_equal(example["image"],
                                  images.fit(images.decode(data), (12, 16), "center"))
  assert source[-1]["caption"] == examples[-1][1]
  with pytest.raises(IndexError):
    source[8]  # pylint: disable=pointless-statement
  # A comma list reads the same shards in the given order.
  reordered = records.ArrayRecordSource(f"{paths[2]},{paths[0]}", 8)
  assert len(reordered) == 7 and reordered[0]["caption"] == examples[4][1]


def test_random_crop_is_deterministic_per_seed_and_index(tmp_path):
  rng = np.random.default_rng(1)
  path = tmp_path / "train-00000-of-00001.array_record"
  wide = [_jpeg(rng, 32, 96) for _ in range(6)]
  records.write_records(path, [records.encode_record(d, "wide", encoding="jpeg", width=96,
                                                     height=32) for d in wide])
  source = records.ArrayRecordSource(str(path), 24, crop="random", seed=3)
  again = records.ArrayRecordSource(str(path), 24, crop="random", seed=3)
  other_seed = records.ArrayRecordSource(str(path), 24, crop="random", seed=4)
  for i in range(6):
    np.testing.assert_array_equal(source[i]["image"], again[i]["image"])
    expected = images.fit(images.decode(wide[i]), 24, np.random.default_rng([3, i]))
    np.testing.assert_array_equal(source[i]["image"], expected)
  assert any(not np.array_equal(source[i]["image"], other_seed[i]["image"]) for i in range(6))
  # The same image at four indices: the windows differ (the crop depends on the index).
  same_path = tmp_path / "same.array_record"
  records.write_records(same_path, [records.encode_record(wide[0], "x", encoding="jpeg",
                                                          width=96, height=32)] * 4)
  same = records.ArrayRecordSource(str(same_path), 24, crop="random")
  crops = [same[i]["image"] for i in range(4)]
  assert any(not np.array_equal(crops[0], c) for c in crops[1:])


def test_corrupt_records_fall_back_to_the_next_good_one(tmp_path):
  rng = np.random.default_rng(2)
  path = tmp_path / "train-00000-of-00001.array_record"
  good = [_jpeg(rng, 16, 16) for _ in range(3)]
  records.write_records(path, [
      records.encode_record(good[0], "zero", encoding="jpeg", width=16, height=16),
      records.encode_record(b"not an image", "bad image", encoding="jpeg", width=16, height=16),
      b"not even a record",
      records.encode_record(good[1], "three", encoding="jpeg", width=16, height=16),
  ])
  source = records.ArrayRecordSource(str(path), 8)
  assert source[1]["caption"] == "three" and source[2]["caption"] == "three"
  assert source.stats() == {"num_examples": 4, "num_fallbacks": 3}
  assert source[0]["caption"] == "zero"
  batches = list(loader.batch_iterator(source, batch_size=2, seed=0, num_epochs=1))
  assert [list(b["caption"]) for b in batches] and all(b["image"].shape == (2, 8, 8, 3)
                                                       for b in batches)


def test_pickles_without_open_readers(tmp_path):
  paths, examples = _shards(tmp_path, [2, 2], np.random.default_rng(3))
  source = records.ArrayRecordSource(paths, 10, crop="random", seed=5)
  first = source[3]  # Opens a reader.
  clone = pickle.loads(pickle.dumps(source))
  assert len(clone) == 4 and clone[3]["caption"] == examples[3][1]
  np.testing.assert_array_equal(clone[3]["image"], first["image"])


def test_worker_processes_read_the_same_batches(tmp_path):
  paths, _ = _shards(tmp_path, [3, 3], np.random.default_rng(5))
  source = records.ArrayRecordSource(paths, 8, crop="random", seed=1)
  inline = loader.batch_iterator(source, batch_size=2, seed=0)
  workers = loader.batch_iterator(source, batch_size=2, seed=0, num_workers=1)
  for _ in range(4):  # Past one epoch: the worker's unpickled source reopened its shards.
    expected, got = next(inline), next(workers)
    assert list(got["caption"]) == list(expected["caption"])
    np.testing.assert_array_equal(got["image"], expected["image"])
  if hasattr(workers, "close"):
    workers.close()


def test_bad_paths_are_clear(tmp_path):
  with pytest.raises(ValueError, match="no ArrayRecord shards match"):
    records.ArrayRecordSource(str(tmp_path / "*.array_record"), 8)
  with pytest.raises(ValueError, match="does not exist"):
    records.ArrayRecordSource(str(tmp_path / "nope.array_record"), 8)
  (tmp_path / "junk.array_record").write_bytes(b"junk" * 100)
  with pytest.raises(ValueError, match="cannot open"):
    records.ArrayRecordSource(str(tmp_path / "junk.array_record"), 8)
  with pytest.raises(ValueError, match="crop"):
    records.ArrayRecordSource(str(tmp_path / "junk.array_record"), 8, crop="left")


def test_from_config_picks_split_shards(tmp_path):
  rng = np.random.default_rng(4)
  _shards(tmp_path, [2, 3], rng, prefix="train")
  _shards(tmp_path, [1], rng, prefix="validation")
  cfg = defaults.data_config()
  cfg.source, cfg.resolution, cfg.max_text_len = "arrayrecord", 16, 8
  cfg.records = str(tmp_path)  # (added here until defaults.data_config has the field)
  cfg.crop = "random"
  train = loader.make_source(cfg, "train")
  validation = loader.make_source(cfg, "validation")
  assert len(train) == 5 and len(validation) == 1
  assert train.source.crop == "random" and validation.source.crop == "center"
  assert train[0]["image"].shape == (16, 16, 3) and train[0]["text_ids"].shape == (8,)
  cfg.records = f"{tmp_path}/*.array_record"  # A glob: the split's prefix picks the shards.
  assert len(loader.make_source(cfg, "validation")) == 1
  cfg.width = 24
  assert loader.make_source(cfg, "train")[0]["image"].shape == (16, 24, 3)
  (tmp_path / "train-00001-of-00002.array_record").unlink()
  cfg.records = str(tmp_path)
  with pytest.raises(ValueError, match="1 of 2 train shards"):
    loader.make_source(cfg, "train")
  cfg.records = ""
  with pytest.raises(ValueError, match="data.records"):
    loader.make_source(cfg, "train")
