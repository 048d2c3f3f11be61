"""mdd.data.captions: evaluation prompts are the held-out split's captions, read without images."""

import json

import ml_collections
import numpy as np
from PIL import Image
import pytest

from mdd import defaults
from mdd.data import captions
from mdd.data import folder
from mdd.data import images
from mdd.data import prompts as prompts_lib

NUM_IMAGES = 40


def _folder_cfg(root, validation_fraction=0.3):
  """A folder of solid images whose grey level is k, captioned "caption k"."""
  lines = []
  for k in range(NUM_IMAGES):
    Image.fromarray(np.full((6, 10, 3), 5 * k, np.uint8)).save(root / f"{k}.png")
    lines.append(json.dumps({"image": f"{k}.png", "caption": f"caption {k}"}))
  (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
  cfg = defaults.data_config()
  cfg.source, cfg.folder, cfg.resolution = "folder", str(root), 4
  cfg.validation_fraction, cfg.verify_images = validation_fraction, False
  return cfg


def _split_captions(root, split):
  source = folder.FolderSource(str(root), resolution=4, split=split, validation_fraction=0.3)
  return [source[i]["caption"] for i in range(len(source))]


def test_captions_come_from_the_validation_split(tmp_path, monkeypatch):
  cfg = _folder_cfg(tmp_path)
  validation = _split_captions(tmp_path, "validation")
  assert 3 <= len(validation) <= NUM_IMAGES - 3  # Both splits are non-trivial.
  # Reading captions never decodes an image.
  for module, name in ((images, "load"), (images, "decode"), (images, "fit")):
    monkeypatch.setattr(module, name, lambda *args, **kwargs: pytest.fail("decoded an image"))
  got = captions.validation_captions(cfg, len(validation), seed=0)
  assert sorted(got) == sorted(validation)  # Each validation caption once, no train caption.
  assert got != validation  # Shuffled by the seed...
  assert captions.validation_captions(cfg, len(validation), seed=0) == got  # ...reproducibly.
  assert captions.validation_captions(cfg, len(validation), seed=1) != got
  assert captions.validation_captions(cfg, 3, seed=0) == got[:3]  # A prefix of the same order.
  assert captions.prompts_for(cfg, 5, seed=0) == got[:5]


def test_more_captions_than_the_split_cycle(tmp_path):
  cfg = _folder_cfg(tmp_path)
  size = len(_split_captions(tmp_path, "validation"))
  got = captions.validation_captions(cfg, 2 * size + 3, seed=2)
  assert got == (got[:size] * 3)[:2 * size + 3]
  assert len(set(got[:size])) == size
  assert captions.validation_captions(cfg, 0) == []


def test_image_batches_match_the_captions(tmp_path):
  cfg = _folder_cfg(tmp_path)
  size = len(_split_captions(tmp_path, "validation"))
  n = size + 5  # Past the split: the reference images are each example once.
  texts = captions.validation_captions(cfg, n, seed=3)
  batches = list(captions.validation_image_batches(cfg, n, seed=3, batch_size=4))
  assert [len(b) for b in batches[:-1]] == [4] * (len(batches) - 1)
  images = np.concatenate(batches)
  assert images.shape == (size, 4, 4, 3) and images.dtype == np.uint8
  levels = [int(round(image.mean())) // 5 for image in images]
  assert [f"caption {k}" for k in levels] == texts[:size]


def test_shapegen_keeps_its_prompt_set():
  cfg = defaults.data_config()
  main = [m["prompt"] for m in prompts_lib.load_prompts("main")]
  assert captions.uses_prompt_set(cfg)
  got = captions.prompts_for(cfg, len(main) + 2)
  assert got == main + main[:2]
  cfg.source, cfg.tfds_name = "tfds", "shape_gen/res64"
  assert captions.uses_prompt_set(cfg)
  cfg.tfds_name = "coco_captions"
  assert not captions.uses_prompt_set(cfg)


def test_heldout_indices():
  np.testing.assert_array_equal(captions.heldout_indices(4, 9, seed=5)[4:8],
                                captions.heldout_indices(4, 4, seed=5))
  assert sorted(captions.heldout_indices(7, 7, seed=1)) == list(range(7))
  with pytest.raises(ValueError, match="empty"):
    captions.heldout_indices(0, 3)


class _PaintingGenerator:
  """Paints "caption k" as the grey level a folder image k has (+ `offset`); records prompts."""

  def __init__(self, data_cfg, offset=0):
    self.config = ml_collections.ConfigDict({"data": data_cfg.to_dict()})
    self.offset, self.prompts = offset, []

  def generate_fn(self, batch_size):
    del batch_size

    def generate(prompts, seeds):
      assert len(seeds) == len(prompts)
      self.prompts += prompts
      levels = [5 * int(p.split()[-1]) + self.offset for p in prompts]
      return np.stack([np.full((4, 4, 3), v, np.uint8) for v in levels])
    return generate


def test_fid_prompts_and_dataset_reference_are_one_split(tmp_path, monkeypatch):
  from mdd.eval import fid  # pylint: disable=g-import-not-at-top
  root = tmp_path / "data"
  root.mkdir()
  cfg = _folder_cfg(root)
  size = len(_split_captions(root, "validation"))
  # A stand-in for the Inception: per-channel means of each image and their squares.
  def features(x):
    means = x.mean((1, 2))
    return np.concatenate([means, means ** 2 / 255], -1)
  monkeypatch.setattr(fid, "inception_feature_fn", lambda weights, batch_size: features)
  section = ml_collections.ConfigDict(dict(weights="w.pth", ref_stats="dataset",
                                           num_samples=size, batch_size=4))
  perfect = _PaintingGenerator(cfg)
  result = fid.evaluate(perfect, section, str(tmp_path / "run"))
  assert perfect.prompts == captions.validation_captions(cfg, size)
  assert result["num_images"] == size and abs(result["fid"]) < 1e-3  # Same images.
  off = fid.evaluate(_PaintingGenerator(cfg, offset=2), section, str(tmp_path / "run"))
  assert off["fid"] > 1.0
  # A statistics file is still read as it is.
  fid.save_statistics(str(tmp_path / "ref.npz"), np.zeros(6), np.eye(6))
  section.ref_stats = str(tmp_path / "ref.npz")
  assert fid.evaluate(perfect, section, str(tmp_path / "run"))["fid"] > 1.0


def test_sample_stage_defaults_to_validation_captions(tmp_path):
  from mdd.inference import sample  # pylint: disable=g-import-not-at-top
  cfg = _folder_cfg(tmp_path)
  sample_cfg = defaults.sample_config()
  assert sample._prompts(sample_cfg, cfg) == captions.validation_captions(cfg, 16)
  shapes = sample._prompts(sample_cfg, defaults.data_config())  # ShapeGen: its prompt set.
  assert len(shapes) == 16 and set(shapes) <= {
      m["prompt"] for m in prompts_lib.load_prompts("main")}
  sample_cfg.prompts = "a cat|a dog"
  assert sample._prompts(sample_cfg, cfg) == ["a cat", "a dog"]
