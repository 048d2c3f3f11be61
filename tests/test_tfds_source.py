"""mdd.data.tfds_source: any TFDS dataset as image + caption examples.

A tiny builder defined here (12 examples of odd sizes and aspects, an RGB and a grayscale image,
nested captions and a class label) is prepared once per module; ShapeGen goes through
`from_config` by its registered name.
"""

import pickle

import ml_collections
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")  # Absent only on the TF-free GPU image.

# pylint: disable=g-import-not-at-top,wrong-import-position
from mdd.data import images
from mdd.data import loader
from mdd.data import shapes_tfds
from mdd.data import tfds_source

NUM_TRAIN, NUM_TEST = 12, 5
RESOLUTION = (16, 24)


def _raw_example(index: int) -> dict:
  rng = np.random.default_rng(index)
  step = index % NUM_TRAIN
  height, width = 13 + 5 * step, 41 - 2 * step  # Wide to tall: every crop has room.
  return {"img": rng.integers(0, 256, (height, width, 3), np.uint8),
          "gray": rng.integers(0, 256, (height, width, 1), np.uint8),
          "meta": {"texts": [f"caption {index} first", f"caption {index} second"],
                   "label": index % 3}}


class TinyPairs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images with nested captions; test split holds examples 100...104."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "img": tfds.features.Image(shape=(None, None, 3)),
            "gray": tfds.features.Image(shape=(None, None, 1)),
            "meta": {"texts": tfds.features.Sequence(tfds.features.Text()),
                     "label": tfds.features.ClassLabel(names=["cat", "dog", "owl"])}}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(NUM_TRAIN)),
            "test": self._generate_examples(range(100, 100 + NUM_TEST))}

  def _generate_examples(self, indices):
    for index in indices:
      yield index, _raw_example(index)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  tiny = TinyPairs(data_dir=str(tmp_path_factory.mktemp("tfds")))
  tiny.download_and_prepare(file_format="array_record")
  return tiny


def _source(builder, split="train", **kwargs):
  kwargs = dict(dict(resolution=RESOLUTION, image_key="img", caption_key="meta/texts",
                     process_index=0, barrier=lambda name: None), **kwargs)
  return tfds_source.TfdsSource(builder, split, **kwargs)


def test_nested_keys_resolution_and_center_crop(builder):
  source = _source(builder)
  assert len(source) == NUM_TRAIN
  for index in (0, 5, 11):
    example = source[index]
    assert set(example) == {"image", "caption", "index"}
    raw = _raw_example(index)
    np.testing.assert_array_equal(example["image"], images.fit(raw["img"], RESOLUTION))
    assert example["image"].dtype == np.uint8 and example["image"].shape == (16, 24, 3)
    assert example["caption"] == f"caption {index} first"  # The first of several, as str.
    assert example["index"] == index
  # Only stackable fields: the loader batches examples of different raw sizes.
  batch = loader.stack_examples([source[i] for i in range(4)])
  assert batch["image"].shape == (4, 16, 24, 3) and batch["caption"].shape == (4,)
  # Captions alone (images left encoded) are the examples' captions.
  assert [source.caption(i) for i in range(NUM_TRAIN)] == [
      source[i]["caption"] for i in range(NUM_TRAIN)]
  # Data loader worker processes get a copy by pickling.
  copy = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(copy[7]["image"], source[7]["image"])
  assert len(_source(builder, "test")) == NUM_TEST
  assert _source(builder, "test")[0]["caption"] == "caption 100 first"
  assert len(_source(builder, "train[:4]")) == 4
  assert len(_source(builder, "train+test")) == NUM_TRAIN + NUM_TEST


def test_random_crop_is_deterministic_per_seed_and_index(builder):
  source = _source(builder, crop="random", seed=3)
  again = _source(builder, crop="random", seed=3)
  other_seed = _source(builder, crop="random", seed=4)
  center = _source(builder)
  differs_from_center = differs_by_seed = 0
  for index in range(NUM_TRAIN):
    image = source[index]["image"]
    np.testing.assert_array_equal(image, again[index]["image"])
    np.testing.assert_array_equal(image, source[index]["image"])
    want = images.fit(_raw_example(index)["img"], RESOLUTION, np.random.default_rng((3, index)))
    np.testing.assert_array_equal(image, want)
    differs_from_center += not np.array_equal(image, center[index]["image"])
    differs_by_seed += not np.array_equal(image, other_seed[index]["image"])
  assert differs_from_center >= NUM_TRAIN - 1 and differs_by_seed >= NUM_TRAIN - 1


def test_grayscale_image_and_class_label_caption(builder):
  source = _source(builder, image_key="gray", caption_key="meta/label", resolution=8)
  example = source[4]
  assert example["image"].shape == (8, 8, 3)
  assert np.array_equal(example["image"][..., 0], example["image"][..., 2])
  np.testing.assert_array_equal(example["image"][..., 0],
                                images.fit(_raw_example(4)["gray"][..., 0], 8)[..., 0])
  assert [source[i]["caption"] for i in range(4)] == ["cat", "dog", "owl", "cat"]


def test_only_process_zero_prepares(builder, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(builder, "download_and_prepare",
                      lambda **kwargs: calls.append(("prepare", kwargs)))
  barrier = lambda name: calls.append(("barrier", name))
  assert len(_source(builder, process_index=1, barrier=barrier)) == NUM_TRAIN
  assert calls == [("barrier", "mdd_tfds_prepare_tiny_pairs")]
  calls.clear()
  _source(builder, process_index=0, barrier=barrier)
  assert calls == [("prepare", {"file_format": "array_record"}),
                   ("barrier", "mdd_tfds_prepare_tiny_pairs")]
  calls.clear()
  _source(builder, prepare=False, barrier=barrier)
  assert not calls
  # Another host found nothing after the barrier (data_dir not shared): one line, no prepare.
  unprepared = TinyPairs(data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="not prepared at .* after process 0") as error:
    _source(unprepared, process_index=1, barrier=barrier)
  assert calls == [("barrier", "mdd_tfds_prepare_tiny_pairs")]
  assert "\n" not in str(error.value) and not (tmp_path / "tiny_pairs").exists()


def test_one_line_errors(builder, tmp_path):
  cases = [
      (dict(image_key="image"), "tfds_image_key='image' is not a feature.*'meta/texts'"),
      (dict(caption_key="meta/text"), "tfds_caption_key='meta/text'.*'gray', 'img'"),
      (dict(image_key="meta/texts"), "is a Text feature, not an image"),
      (dict(crop="left"), "data.crop must be one of"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      _source(builder, **kwargs)
    assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="no split 'validation'.*tfds_split_map"):
    _source(builder, "validation")
  tfrecord = TinyPairs(data_dir=str(tmp_path))
  tfrecord.download_and_prepare(file_format="tfrecord")
  with pytest.raises(ValueError, match="prepared as tfrecord.*file_format='array_record'") as error:
    _source(tfrecord)
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="mdd_split=tfds_split"):
    tfds_source.parse_split_map("validation")
  assert tfds_source.parse_split_map(" validation=test , train=train[:90%]") == {
      "validation": "test", "train": "train[:90%]"}


@pytest.fixture(scope="module")
def shapegen_cfg(tmp_path_factory):
  """`shape_gen/res32` by name, prepared by `from_config` with its splits cut to 8/3/4."""
  res32 = next(c for c in shapes_tfds.ShapeGen.BUILDER_CONFIGS if c.name == "res32")
  cfg = ml_collections.ConfigDict(dict(
      source="tfds", tfds_name="shape_gen/res32",
      tfds_data_dir=str(tmp_path_factory.mktemp("shapegen")), resolution=32, width=0, seed=0,
      crop="random", tfds_split_map="validation=heldout"))
  with pytest.MonkeyPatch.context() as patch:
    for field, size in (("num_train", 8), ("num_validation", 3), ("num_heldout", 4)):
      patch.setattr(res32, field, size)
    tfds_source.from_config(cfg, "train")  # Process 0 prepares it.
  return cfg


def test_shapegen_through_from_config(shapegen_cfg):
  cfg = ml_collections.ConfigDict(shapegen_cfg.to_dict())
  train = tfds_source.from_config(cfg, "train")
  reference = loader.ShapeGenSource(num_examples=8, seed=0, split="train", resolution=32)
  assert len(train) == 8
  for index in (0, 7):
    np.testing.assert_array_equal(train[index]["image"], reference[index]["image"])
    assert train[index]["caption"] == reference[index]["caption"]
  validation = tfds_source.from_config(cfg, "validation")  # Mapped to heldout, center crop.
  heldout = loader.ShapeGenSource(num_examples=4, seed=0, split="heldout", resolution=32)
  assert len(validation) == 4 and validation.crop == "center"
  assert validation[3]["caption"] == heldout[3]["caption"]
  cfg.resolution, cfg.width = 16, 24
  small = tfds_source.from_config(cfg, "validation")
  np.testing.assert_array_equal(small[1]["image"], images.fit(heldout[1]["image"], (16, 24)))
  cfg.tfds_name = ""
  with pytest.raises(ValueError, match="data.tfds_name"):
    tfds_source.from_config(cfg, "train")
