"""The converter: folder and WebDataset inputs to ArrayRecord shards, skips counted, resumable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data_fixtures
from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import
from mdd import defaults
from mdd.data import convert
from mdd.data import folder
from mdd.data import images
from mdd.data import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_all(output) -> dict[str, records.Record]:
  """key -> record over every shard in `output` (asserts each key appears once)."""
  found = {}
  for split in records.SPLITS:
    names = sorted(p for p in os.listdir(output) if p.startswith(f"{split}-"))
    if not names:
      continue
    source = records.ArrayRecordSource([os.path.join(output, n) for n in names], 8)
    for i in range(len(source)):
      record = records.decode_record(source.read_record(i))
      assert record.key not in found, record.key
      found[record.key] = (split, record)
  return found


def _files(output) -> dict[str, bytes]:
  out = {}
  for directory, _, names in os.walk(output):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, output)] = f.read()
  return out


def test_folder_conversion_counts_and_contents(tmp_path):
  fixture = data_fixtures.write_image_folder(tmp_path / "in")
  out = tmp_path / "out"
  stats = convert.convert(str(tmp_path / "in"), str(out), max_side=24, shard_size=4,
                          validation_fraction=0.3, progress=False)
  assert stats["complete"] and stats["input_format"] == "folder"
  assert stats["skipped"] == {"bad manifest line": 1, "missing file": 1, "unreadable image": 3}
  assert stats["num_skipped"] == 5
  assert sum(stats["num_examples"].values()) == len(fixture.good)
  with open(out / "stats.json") as f:
    assert json.load(f) == {k: v for k, v in stats.items() if k != "complete"}
  found = _read_all(out)
  assert set(found) == set(fixture.good)  # Every good image exactly once, nothing else.
  for key, (split, record) in found.items():
    assert record.caption == fixture.good[key]
    assert split == ("validation" if convert.in_validation(key, 0.3) else "train")
    assert record.meta == {"source": "test"} and record.encoding == "jpeg"
    stored = images.decode(record.image_bytes)
    assert stored.size == (record.width, record.height)
    original = images.decode((tmp_path / "in" / key).read_bytes())
    assert original.size == (record.original_width, record.original_height)
    assert min(stored.size) == min(24, min(original.size))  # Scaled down, never up.
    assert abs(stored.size[0] / stored.size[1] - original.size[0] / original.size[1]) < 0.05
    if stored.size == original.size and min(stored.size) >= 8:  # Same up to JPEG re-encoding.
      error = np.abs(np.asarray(stored, np.float32) - np.asarray(original, np.float32))
      assert error.mean() < 4, key
  assert stats["num_downscaled"] == sum(r.width != r.original_width for _, r in found.values())
  # The EXIF-rotated JPEG (stored 44 wide x 20 high, orientation 6) is upright: 20 x 44.
  rotated = next(r for k, (_, r) in found.items() if k.endswith("rotated.jpg"))
  assert (rotated.original_width, rotated.original_height) == (20, 44)
  # Shards are cut from the planned entries (those that fail to decode included), 4 at a time.
  planned = list(fixture.good) + fixture.corrupt + fixture.missing
  num_train = sum(not convert.in_validation(k, 0.3) for k in planned)
  # The split rule is the folder source's, so both put an image in the same split.
  folder_rule = folder._in_validation  # pylint: disable=protected-access
  assert all(convert.in_validation(k, f) == folder_rule(k, f) for k in planned for f in (0.3, .7))
  assert stats["num_shards"] == {"train": -(-num_train // 4),
                                 "validation": -(-(len(planned) - num_train) // 4)}


def test_lossless_conversion_reads_like_the_folder_source(tmp_path):
  fixture = data_fixtures.write_image_folder(tmp_path / "in")
  out = tmp_path / "out"
  convert.convert(str(tmp_path / "in"), str(out), max_side=0, image_format="png",
                  validation_fraction=0.0, progress=False)
  source = records.ArrayRecordSource(records.split_shards(out, "train"), (12, 20))
  reference = folder.FolderSource(str(tmp_path / "in"), resolution=(12, 20))
  assert len(source) == len(reference) == len(fixture.good)
  for i in range(len(source)):
    assert source[i]["key"] == reference[i]["path"]
    np.testing.assert_array_equal(source[i]["image"], reference[i]["image"])


def test_resume_and_parallel_runs_give_identical_bytes(tmp_path):
  data_fixtures.write_image_folder(tmp_path / "in")
  kwargs = dict(max_side=16, shard_size=3, validation_fraction=0.2, progress=False)
  full = tmp_path / "full"
  convert.convert(str(tmp_path / "in"), str(full), **kwargs)
  expected = _files(full)
  names = sorted(n for n in expected if n.endswith(".array_record"))
  assert len(names) >= 4 and "stats.json" in expected

  # An interrupted run (two shards built), then a rerun in two worker processes.
  partial = tmp_path / "partial"
  stats = convert.convert(str(tmp_path / "in"), str(partial), max_shards=2, **kwargs)
  assert not stats["complete"] and stats["num_shards_done"] == 2
  assert not (partial / "stats.json").exists()
  kept = {n: os.stat(partial / n).st_mtime_ns for n in os.listdir(partial)
          if n.endswith(".array_record")}
  assert len(kept) == 2
  convert.convert(str(tmp_path / "in"), str(partial), num_workers=2, **kwargs)
  assert _files(partial) == expected
  assert all(os.stat(partial / n).st_mtime_ns == t for n, t in kept.items())  # Not rebuilt.

  # A lost shard and its done record, and a done record of other inputs: both rebuilt.
  os.remove(full / names[1])
  os.remove(full / convert.PROGRESS_DIR / f"{names[1]}.json")
  stale = full / convert.PROGRESS_DIR / f"{names[2]}.json"
  stale.write_text(json.dumps(dict(json.loads(stale.read_text()), fingerprint="other")))
  os.remove(full / "stats.json")
  convert.convert(str(tmp_path / "in"), str(full), **kwargs)
  assert _files(full) == expected


def test_webdataset_conversion(tmp_path):
  fixture = data_fixtures.write_webdataset(tmp_path / "tars", num_shards=2)
  (tmp_path / "tars" / "notes.md").write_text("not a tar")
  out = tmp_path / "out"
  stats = convert.convert(str(tmp_path / "tars"), str(out), max_side=32, shard_size=5,
                          validation_fraction=0.1, progress=False)
  assert stats["input_format"] == "webdataset"
  assert stats["skipped"] == {"no caption": len(fixture.no_caption),
                              "no image": len(fixture.no_image),
                              "unreadable image": len(fixture.corrupt)}
  found = _read_all(out)
  assert set(found) == set(fixture.good)
  for key, (split, record) in found.items():
    assert record.caption == fixture.good[key]
    assert split == ("validation" if convert.in_validation(key, 0.1) else "train")
    if int(key[-4:]) % 2 == 0:  # Captions from .json: the other fields are kept.
      assert record.meta == {"url": f"http://x/{int(key[-4:])}", "width": 1}
    else:
      assert record.meta is None
  # One tar by name and a glob give the same examples as the directory.
  glob_stats = convert.convert(str(tmp_path / "tars" / "*.tar"), str(tmp_path / "glob"),
                               max_side=32, shard_size=5, validation_fraction=0.1,
                               progress=False)
  assert glob_stats["num_examples"] == stats["num_examples"]
  one = convert.convert(str(tmp_path / "tars" / "00001.tar"), str(tmp_path / "one"),
                        max_side=32, validation_fraction=0.0, progress=False)
  assert one["num_examples"]["train"] == len(fixture.good) // 2


def test_bad_inputs_give_one_line_errors(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(convert.ConvertError, match="neither manifest.jsonl"):
    convert.convert(str(empty), str(tmp_path / "o1"), progress=False)
  with pytest.raises(convert.ConvertError, match="no manifest.jsonl"):
    convert.convert(str(empty), str(tmp_path / "o1"), input_format="folder", progress=False)
  with pytest.raises(convert.ConvertError, match="no .tar files"):
    convert.convert(str(empty), str(tmp_path / "o1"), input_format="webdataset",
                    progress=False)
  with pytest.raises(convert.ConvertError, match="does not exist"):
    convert.convert(str(tmp_path / "nowhere"), str(tmp_path / "o1"), progress=False)
  (empty / "manifest.jsonl").write_text("{oops\n" + json.dumps({"image": "x.png"}) + "\n")
  with pytest.raises(convert.ConvertError, match="no usable examples"):
    convert.convert(str(empty), str(tmp_path / "o1"), progress=False)
  (empty / "bad.png").write_bytes(b"not a png")
  (empty / "manifest.jsonl").write_text(json.dumps({"image": "bad.png", "caption": "x"}))
  with pytest.raises(convert.ConvertError, match="could be decoded"):
    convert.convert(str(empty), str(tmp_path / "o2"), progress=False)
  # Shards of another conversion in the output directory are refused.
  data_fixtures.write_image_folder(tmp_path / "in")
  convert.convert(str(tmp_path / "in"), str(tmp_path / "o3"), shard_size=3, progress=False)
  with pytest.raises(convert.ConvertError, match="another conversion"):
    convert.convert(str(tmp_path / "in"), str(tmp_path / "o3"), shard_size=4, progress=False)
  # The command line prints one line and fails.
  result = subprocess.run(
      [sys.executable, "-m", "mdd.data.convert", f"--input={empty}",
       f"--output={tmp_path / 'o4'}", "--format=webdataset", "--num_workers=1"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [f"error: no .tar files at {empty} (--format="
                                                "webdataset reads a directory of tar shards, "
                                                "a glob or one tar)"]


def test_gcs_input_and_output(gcs_bucket, tmp_path):  # pylint: disable=redefined-outer-name
  """WebDataset tars on gs:// -> shards on gs:// (twice: the rerun reuses them) -> the
  arrayrecord source reads them with ArrayRecord's own GCS client, against the emulator."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  fixture = data_fixtures.write_webdataset(tmp_path / "tars", num_shards=1)
  remote = f"{gcs_bucket}/{tmp_path.name}"
  epath.Path(tmp_path / "tars" / "00000.tar").copy(epath.Path(f"{remote}/tars/00000.tar"))
  kwargs = dict(max_side=32, shard_size=4, validation_fraction=0.2, progress=False)
  stats = convert.convert(f"{remote}/tars", f"{remote}/out", **kwargs)
  assert sum(stats["num_examples"].values()) == len(fixture.good)
  written = {p.name: p.stat().mtime for p in epath.Path(f"{remote}/out").glob("*.array_record")}
  assert convert.convert(f"{remote}/tars", f"{remote}/out", **kwargs) == stats
  assert {p.name: p.stat().mtime
          for p in epath.Path(f"{remote}/out").glob("*.array_record")} == written
  cfg = defaults.data_config()
  cfg.source, cfg.resolution, cfg.records = "arrayrecord", 16, f"{remote}/out"
  train = records.from_config(cfg, "train")
  assert train.paths[0].startswith(f"{remote}/out/train-")
  assert len(train) == stats["num_examples"]["train"]
  assert {train[i]["key"] for i in range(len(train))} <= set(fixture.good)
  assert train[0]["image"].shape == (16, 16, 3)
