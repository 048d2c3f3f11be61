"""User-folder source: real images of several formats, corrupt ones skipped and counted."""

import io
import json
import os

import numpy as np
from PIL import Image
import pytest

from mdd import defaults
from mdd.data import folder
from mdd.data import loader


def _write_folder(root, rng):
  """Good images of several kinds plus every kind of bad entry; returns the good captions."""
  os.makedirs(root / "imgs" / "sub")
  good = []

  def add(name, image, fmt):
    image.save(root / "imgs" / name, format=fmt)
    good.append((f"imgs/{name}", f"caption for {name}"))

  add("rgb.png", Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)), "PNG")
  add("photo.jpg", Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)), "JPEG")
  add("sub/gray.png", Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)), "PNG")
  add("alpha.png", Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)), "PNG")
  (root / "imgs" / "corrupt.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
  (root / "imgs" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
  lines = [json.dumps({"image": path, "caption": caption}) for path, caption in good[:2]]
  lines += [json.dumps({"image": "imgs/corrupt.png", "caption": "corrupt"}),
            "{not json",
            json.dumps({"image": "imgs/missing.png", "caption": "missing"}),
            json.dumps({"image": "imgs/rgb.png"}),
            "",
            json.dumps({"image": "imgs/truncated.jpg", "caption": "truncated"})]
  lines += [json.dumps({"image": path, "caption": caption}) for path, caption in good[2:]]
  (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
  return good


def test_reads_real_images_and_skips_bad_entries(tmp_path):
  good = _write_folder(tmp_path, np.random.default_rng(0))
  source = folder.FolderSource(str(tmp_path), resolution=24)
  assert len(source) == len(good)
  assert [source[i]["path"] for i in range(len(source))] == [p for p, _ in good]
  assert [source[i]["caption"] for i in range(len(source))] == [c for _, c in good]
  stats = source.stats()
  assert stats == {"num_examples": 4, "num_skipped": 5, "num_fallbacks": 0}
  reasons = dict(source.skipped)
  assert "unreadable" in reasons["imgs/corrupt.png"]
  assert "unreadable" in reasons["imgs/truncated.jpg"]
  assert reasons["imgs/missing.png"] == "file not found"
  for i in range(len(source)):
    image = source[i]["image"]
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8
  # Content: centre crop of the 40x60 PNG to 40x40, resized to 24x24.
  original = Image.open(tmp_path / "imgs" / "rgb.png").crop((10, 0, 50, 40))
  expected = np.asarray(original.resize((24, 24), Image.BICUBIC))
  # (Edges may differ: the resize may read pixels just outside the crop.)
  np.testing.assert_allclose(source[0]["image"][2:-2, 2:-2], expected[2:-2, 2:-2], atol=2)
  gray = source[2]["image"]
  assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_unverified_corrupt_image_falls_back_without_crashing(tmp_path):
  _write_folder(tmp_path, np.random.default_rng(1))
  source = folder.FolderSource(str(tmp_path), resolution=(16, 32), verify_images=False)
  paths = [source._entries[i][0] for i in range(len(source))]  # pylint: disable=protected-access
  corrupt = paths.index("imgs/corrupt.png")
  example = source[corrupt]  # Falls forward past corrupt.png and truncated.jpg.
  assert example["path"] == paths[corrupt + 2] and example["image"].shape == (16, 32, 3)
  assert source.stats()["num_fallbacks"] == 2
  # A whole pass over the source never raises.
  batches = list(loader.batch_iterator(source, batch_size=3, seed=0, num_epochs=1,
                                         drop_remainder=False))
  assert sum(int(b["valid"].sum()) for b in batches) == len(source)


def test_validation_split_is_disjoint_and_complete(tmp_path):
  good = _write_folder(tmp_path, np.random.default_rng(2))
  train = folder.FolderSource(str(tmp_path), resolution=8, validation_fraction=0.5)
  validation = folder.FolderSource(str(tmp_path), resolution=8, split="validation",
                                   validation_fraction=0.5)
  train_paths = {train[i]["path"] for i in range(len(train))}
  validation_paths = {validation[i]["path"] for i in range(len(validation))}
  assert not train_paths & validation_paths
  assert train_paths | validation_paths == {p for p, _ in good}


def test_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="no manifest"):
    folder.FolderSource(str(tmp_path))
  (tmp_path / "bad.png").write_bytes(b"not an image")
  (tmp_path / "manifest.jsonl").write_text(json.dumps({"image": "bad.png", "caption": "x"}))
  with pytest.raises(ValueError, match="no usable images"):
    folder.FolderSource(str(tmp_path))
  with pytest.raises(ValueError, match="split"):
    folder.FolderSource(str(tmp_path), split="heldout")


def test_make_source_folder_adds_text(tmp_path):
  good = _write_folder(tmp_path, np.random.default_rng(3))
  cfg = defaults.data_config()
  cfg.source, cfg.folder, cfg.resolution, cfg.max_text_len = "folder", str(tmp_path), 16, 12
  source = loader.make_source(cfg, "train")
  batch = next(loader.batch_iterator(source, batch_size=4, seed=0, shuffle=False))
  assert batch["image"].shape == (4, 16, 16, 3)
  assert batch["text_ids"].shape == (4, 12) and batch["text_ids"].dtype == np.int32
  assert batch["text_truncated"].all()  # "caption for imgs/..." is longer than 11 bytes.
  assert list(batch["caption"]) == [c for _, c in good]
  cfg.folder = ""
  with pytest.raises(ValueError, match="data.folder"):
    loader.make_source(cfg, "train")
