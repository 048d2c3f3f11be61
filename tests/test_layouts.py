"""GenEval and DPG-Bench output layouts: written by our generators, read back from disk."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mdd.eval import dpg_generate
from mdd.eval import dpg_layout
from mdd.eval import geneval_generate
from mdd.eval import geneval_layout
from mdd.eval import shapes_geneval


def _fake_image(seed, size=8):
  return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


class _FakeGenerator:
  """Image = a pure function of the seed; records every call."""

  def __init__(self):
    self.calls = []

  def __call__(self, prompts, seeds):
    self.calls.append((list(prompts), list(seeds)))
    return np.stack([_fake_image(s) for s in seeds])


_METADATA = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
     "prompt": "a photo of a circle"},
    {"tag": "counting", "include": [{"class": "square", "count": 3}],
     "exclude": [{"class": "square", "count": 4}], "prompt": "a photo of three squares"},
    {"tag": "position", "include": [{"class": "circle", "count": 1},
                                    {"class": "square", "count": 1, "position": ["above", 0]}],
     "prompt": "a photo of a square above a circle"},
    {"tag": "color_attr", "include": [{"class": "triangle", "count": 1, "color": "purple"},
                                      {"class": "circle", "count": 1, "color": "yellow"}],
     "prompt": "a photo of a purple triangle and a yellow circle"},
    {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "black"}],
     "prompt": "a photo of a black square"},
]


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      with open(os.path.join(dirpath, name), "rb") as f:
        out[os.path.relpath(os.path.join(dirpath, name), root)] = f.read()
  return out


def test_geneval_layout_written_and_read_back(tmp_path):
  fake = _FakeGenerator()
  out = str(tmp_path / "a")
  geneval_layout.generate_layout(fake, _METADATA, out, images_per_prompt=4, batch_size=3,
                                 seed=100)
  assert sorted(os.listdir(out)) == [f"{i:05d}" for i in range(5)]
  assert max(len(p) for p, _ in fake.calls) == 3
  for i, meta in enumerate(_METADATA):
    folder = os.path.join(out, f"{i:05d}")
    with open(os.path.join(folder, "metadata.jsonl")) as f:
      text = f.read()
    assert "\n" not in text.strip() and json.loads(text) == meta  # GenEval: json.load(fp)
    assert sorted(os.listdir(os.path.join(folder, "samples"))) == [
        "0000.png", "0001.png", "0002.png", "0003.png"]
    for j in range(4):
      image = np.asarray(Image.open(os.path.join(folder, "samples", f"{j:04d}.png")))
      np.testing.assert_array_equal(image, _fake_image(100 + 4 * i + j))
  entries = geneval_layout.read_layout(out)
  assert [e["index"] for e in entries] == list(range(5))
  assert [e["metadata"] for e in entries] == _METADATA
  assert all(len(e["images"]) == 4 for e in entries)
  # The layout does not depend on the batch size.
  geneval_layout.generate_layout(_FakeGenerator(), _METADATA, str(tmp_path / "b"),
                                 batch_size=7, seed=100)
  assert _files(out) == _files(str(tmp_path / "b"))
  # Resume: only the incomplete prompt folder is generated again.
  os.remove(os.path.join(out, "00003", "samples", "0002.png"))
  again = _FakeGenerator()
  geneval_layout.generate_layout(again, _METADATA, out, batch_size=64, seed=100)
  assert again.calls == [([_METADATA[3]["prompt"]] * 4, [112, 113, 114, 115])]
  assert _files(out) == _files(str(tmp_path / "b"))


def test_geneval_layout_regenerates_when_the_generator_changed(tmp_path):
  out = str(tmp_path / "a")
  first = _FakeGenerator()
  first.fingerprint = {"denoiser_step": 100, "sampler": {"temperature": 1.0}}
  geneval_layout.generate_layout(first, _METADATA, out, images_per_prompt=1, seed=0)
  assert len(first.calls) == 1
  # Same fingerprint: resumed, nothing generated.
  same = _FakeGenerator()
  same.fingerprint = dict(first.fingerprint)
  geneval_layout.generate_layout(same, _METADATA, out, images_per_prompt=1, seed=0)
  assert same.calls == []
  # Other sampler settings: every prompt is generated again, the record is updated.
  changed = _FakeGenerator()
  changed.fingerprint = {"denoiser_step": 100, "sampler": {"temperature": 0.5}}
  geneval_layout.generate_layout(changed, _METADATA, out, images_per_prompt=1, seed=0)
  assert len(changed.calls) == 1 and len(changed.calls[0][0]) == len(_METADATA)
  with open(os.path.join(out, geneval_layout.FINGERPRINT_FILE)) as f:
    assert json.load(f) == changed.fingerprint
  assert [e["index"] for e in geneval_layout.read_layout(out)] == list(range(len(_METADATA)))


def test_geneval_layout_errors(tmp_path):
  with pytest.raises(ValueError, match="returned 1 images for 2"):
    geneval_layout.generate_layout(lambda p, s: np.zeros((1, 8, 8, 3), np.uint8),
                                   _METADATA[:1], str(tmp_path), images_per_prompt=2)
  with pytest.raises(ValueError, match="no 'prompt'"):
    geneval_layout.generate_layout(_FakeGenerator(), [{"tag": "x"}], str(tmp_path))
  with pytest.raises(ValueError, match="uint8"):
    geneval_layout.generate_layout(lambda p, s: np.zeros((len(p), 8, 8, 3), np.float32),
                                   _METADATA[:1], str(tmp_path / "f"))
  with pytest.raises(ValueError, match="not found"):
    geneval_layout.read_layout(str(tmp_path / "missing"))


def test_geneval_generate_cli_groundtruth_is_scored_perfect(tmp_path):
  meta_file = tmp_path / "evaluation_metadata.jsonl"
  meta_file.write_text("".join(json.dumps(m) + "\n" for m in _METADATA))
  out = str(tmp_path / "out")
  geneval_generate.main([str(meta_file), "--outdir", out, "--generator", "groundtruth",
                         "--resolution", "48", "--images_per_prompt", "2"])
  entries = geneval_layout.read_layout(out)
  assert len(entries) == 5 and all(len(e["images"]) == 2 for e in entries)
  assert Image.open(entries[0]["images"][0]).size == (48, 48)
  summary = shapes_geneval.score_layout(out)
  assert summary["overall"] == 1.0 and summary["num_images"] == 10
  with pytest.raises(SystemExit, match="metadata file not found"):
    geneval_generate.main([str(tmp_path / "nope.jsonl"), "--outdir", out])


def test_dpg_grid_roundtrip_and_order():
  images = np.stack([_fake_image(s, size=6) for s in range(4)])
  grid = dpg_layout.make_grid(images)
  assert grid.shape == (12, 12, 3)
  np.testing.assert_array_equal(grid[:6, 6:], images[1])  # row-major: 0 1 / 2 3
  np.testing.assert_array_equal(grid[6:, :6], images[2])
  np.testing.assert_array_equal(dpg_layout.split_grid(grid), images)
  with pytest.raises(ValueError, match="4 uint8"):
    dpg_layout.make_grid(images[:3])


def test_dpg_grids_named_after_prompt_files(tmp_path):
  prompts = tmp_path / "prompts"
  prompts.mkdir()
  texts = {"0001": "A red apple on a table.", "ab_cd": "Two cats.", "zz": "A tower at night."}
  for name, text in texts.items():
    (prompts / f"{name}.txt").write_text(text + "\n")
  (prompts / "README.md").write_text("not a prompt")
  fake = _FakeGenerator()
  out = tmp_path / "out"
  paths = dpg_layout.generate_grids(fake, str(prompts), str(out), batch_size=5, seed=7)
  assert sorted(os.listdir(out)) == ["0001.png", "ab_cd.png", "zz.png"]
  assert paths == [str(out / f"{n}.png") for n in sorted(texts)]
  assert sorted({p for prompts_, _ in fake.calls for p in prompts_}) == sorted(texts.values())
  for i, name in enumerate(sorted(texts)):
    tiles = dpg_layout.split_grid(np.asarray(Image.open(out / f"{name}.png")))
    np.testing.assert_array_equal(tiles, np.stack([_fake_image(7 + 4 * i + j) for j in range(4)]))
  os.remove(out / "ab_cd.png")
  again = _FakeGenerator()
  dpg_layout.generate_grids(again, str(prompts), str(out), seed=7)
  assert again.calls == [(["Two cats."] * 4, [11, 12, 13, 14])]
  with pytest.raises(ValueError, match="no .txt"):
    dpg_layout.read_prompt_files(str(out))


def test_dpg_generate_cli_one_line_errors(tmp_path):
  (tmp_path / "p.txt").write_text("x")
  with pytest.raises(SystemExit, match="not an mdd workdir"):
    dpg_generate.main(["--prompts_dir", str(tmp_path), "--outdir", str(tmp_path / "o"),
                       "--workdir", str(tmp_path)])
  with pytest.raises(SystemExit, match="not found"):
    dpg_generate.main(["--prompts_dir", str(tmp_path / "none"), "--outdir", "o",
                       "--workdir", "w"])
