"""ShapeGen as a TFDS dataset (`shape_gen/res32` ... `res512`); generated locally, no download.

Record i of each split (train, validation, heldout) is exactly
`mdd.data.shapes.generate_example(seed, i, split, resolution)` plus its `index` (records are kept
in index order; PNG images are lossless):

  import tensorflow_datasets as tfds
  from mdd.data import shapes_tfds  # registers the builder
  builder = tfds.builder("shape_gen/res64", data_dir=DIR)
  builder.download_and_prepare(file_format="array_record")  # random access, grain-friendly
  train = builder.as_data_source("train")

Needs TensorFlow Datasets (and TensorFlow to encode); the TF-free path is
`mdd.data.loader.ShapeGenSource`, which yields the same examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mdd.data import shapes

_DEFAULT_SIZES = {"train": 20_000, "validation": 1_000, "heldout": 1_000}


@dataclasses.dataclass
class ShapeGenConfig(tfds.core.BuilderConfig):
  """One resolution and split sizes; `seed` picks the ShapeGen stream."""
  resolution: int = 32
  seed: int = 0
  num_train: int = _DEFAULT_SIZES["train"]
  num_validation: int = _DEFAULT_SIZES["validation"]
  num_heldout: int = _DEFAULT_SIZES["heldout"]


class ShapeGen(tfds.core.GeneratorBasedBuilder):
  """Procedural shapes with GenEval-style captions and metadata (see mdd.data.shapes)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ShapeGenConfig(name=f"res{r}", description=f"{r}x{r} images", resolution=r)
      for r in (32, 64, 128, 256, 512)
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(r, r, 3), encoding_format="png"),
            "caption": tfds.features.Text(),
            "tag": tfds.features.Text(),
            "metadata": tfds.features.Text(),  # GenEval-schema JSON
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=None,
        # Keep index order so record i is generate_example(seed, i, ...), as in ShapeGenSource.
        disable_shuffling=True,
        homepage="https://github.com/",  # Generated locally; there is no upstream page.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.num_train),
        "validation": self._generate_examples("validation", config.num_validation),
        "heldout": self._generate_examples("heldout", config.num_heldout),
    }

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      example = shapes.generate_example(config.seed, index, split, config.resolution)
      yield index, dict(example, index=index)
