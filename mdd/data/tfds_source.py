"""Any TensorFlow Datasets dataset as a text-to-image source: image fitted, caption as text.

`TfdsSource(name_or_builder, split, ...)[i]` -> `{"image": uint8 [H, W, 3], "caption": str,
"index": int64}` and nothing else (a dataset's other fields differ in shape from example to
example and would not stack into batches):

* **Keys** name a feature by its path: `"image"`, `"captions/text"` (COCO), `"objects/label"`.
  A path that holds several values (a `Sequence`, e.g. COCO's five captions) gives its first
  one, so example `i` always has the same caption. Bytes become `str`; a `ClassLabel` becomes
  its class name. An unknown key is a one-line `ValueError` listing the dataset's keys.
* **Images** go through `mdd.data.images.fit`: scaled to cover `resolution` and cropped,
  `crop="center"` or `"random"` (the window of example `i` is drawn from
  `default_rng((seed, i))`: the same every epoch and on every host; `from_config` crops at
  random in the train split only). Grayscale and RGBA become RGB.
* **Preparing** (`prepare=True`): only JAX process 0 runs
  `download_and_prepare(file_format="array_record")`; every process then waits at a barrier
  (`multihost_utils.sync_global_devices`; injectable for tests) and opens the prepared files, so
  `data_dir` must be storage all hosts share. Random access needs ArrayRecord (or Parquet): a
  dataset prepared as TFRecord is a one-line error that says so.
* **Captions alone**: `caption(i)` reads example `i` with its images left encoded (for
  evaluation prompts, `mdd.data.captions`).
* **Splits**: `from_config` reads `data.tfds_split_map`, a comma list `mdd_split=tfds_split`
  (e.g. `"validation=test"`, or `"train=train[:-1000],validation=train[-1000:]"` with TFDS's
  slicing) for datasets whose split names differ from the ones mdd asks for; a split not in the
  map is read by its own name.

Needs `tensorflow-datasets` (and TensorFlow to prepare), imported only when a source is built.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from mdd.data import images

Barrier = Callable[[str], None]


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ValueError("data.source=tfds needs tensorflow-datasets and tensorflow (the `tf` "
                     "extra); use source=shapes or folder without them") from error
  return tfds


def _feature_paths(feature, prefix: str = ""):
  """The paths ("a/b") of every leaf feature under `feature`."""
  tfds = _import_tfds()
  while isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  if isinstance(feature, tfds.features.FeaturesDict):
    for key in feature.keys():
      yield from _feature_paths(feature[key], f"{prefix}{key}/")
  else:
    yield prefix[:-1]


def _feature_at(features, path: str, what: str):
  """The leaf feature at `path` (Sequence levels stepped through); ValueError if absent."""
  tfds = _import_tfds()
  feature = features
  for part in path.split("/"):
    while isinstance(feature, tfds.features.Sequence):
      feature = feature.feature
    if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature.keys():
      raise ValueError(f"{what}={path!r} is not a feature of this dataset; its keys are "
                       f"{sorted(_feature_paths(features))}")
    feature = feature[part]
  while isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  return feature


def _skip_images(feature):
  """`decoders` that leave every image (outside sequences) encoded; None if there is none."""
  tfds = _import_tfds()
  if isinstance(feature, tfds.features.Image):
    return tfds.decode.SkipDecoding()
  if isinstance(feature, tfds.features.FeaturesDict):
    decoders = {key: _skip_images(feature[key]) for key in feature.keys()}
    return {key: d for key, d in decoders.items() if d is not None} or None
  return None


def _value_at(example: dict, path: str) -> Any:
  value = example
  for part in path.split("/"):
    value = value[part]
  return value


def _first(value: Any) -> Any:
  """The first value of a sequence (None if empty); a scalar as it is."""
  if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim):
    return value[0] if len(value) else None
  return value


def parse_split_map(text: str) -> dict[str, str]:
  """`"validation=test,train=train[:90%]"` -> {"validation": "test", "train": "train[:90%]"}."""
  mapping = {}
  for item in (s.strip() for s in (text or "").split(",")):
    if not item:
      continue
    mdd_split, sep, tfds_split = (s.strip() for s in item.partition("="))
    if not sep or not mdd_split or not tfds_split:
      raise ValueError(f"data.tfds_split_map: {item!r} is not mdd_split=tfds_split "
                       "(e.g. validation=test)")
    mapping[mdd_split] = tfds_split
  return mapping


class TfdsSource:
  """A prepared TFDS dataset read by index (ArrayRecord), as image + caption examples."""

  def __init__(self, name_or_builder, split: str, *, data_dir: str | None = None,
               resolution: int | tuple[int, int], image_key: str = "image",
               caption_key: str = "caption", crop: str = "center", seed: int = 0,
               process_index: int | None = None, prepare: bool = True,
               barrier: Barrier | None = None):
    """Opens `split` of the dataset, preparing it first (process 0 only) when `prepare`.

    Args:
      name_or_builder: a TFDS name ("coco_captions/2017", "shape_gen/res32") or a builder.
      split: the TFDS split to read, slicing allowed ("train[:1000]").
      data_dir: where TFDS keeps prepared datasets (None: TFDS's default); for a builder
        instance its own `data_dir` is used.
      resolution: output size, an int (square) or (height, width).
      image_key, caption_key: feature paths of the image and the caption.
      crop: "center" or "random" (per-example window from `(seed, index)`).
      seed: seeds the random crops.
      process_index: this JAX process (None: `jax.process_index()`).
      prepare: run `download_and_prepare` (process 0) and the barrier; False only opens.
      barrier: `barrier(name)` waits for every process (None: `mdd.utils.sharding.sync_processes`).
    """
    if crop not in images.CROPS:
      raise ValueError(f"data.crop must be one of {images.CROPS}, got {crop!r}")
    self.resolution = images.size_of(resolution)
    self.crop, self.seed = crop, int(seed)
    self.image_key, self.caption_key = image_key, caption_key
    tfds = _import_tfds()
    builder = self._builder(tfds, name_or_builder, data_dir)
    if process_index is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_index = jax.process_index()
    if prepare:
      if process_index == 0:
        builder.download_and_prepare(file_format="array_record")
      if barrier is None:  # JAX (and its backend) only once preparing needs the barrier
        from mdd.utils import sharding  # pylint: disable=g-import-not-at-top
        barrier = sharding.sync_processes
      barrier(f"mdd_tfds_prepare_{builder.name}")
    if not builder.is_prepared():
      why = ("after process 0 prepared it: is data.tfds_data_dir on storage all hosts share?"
             if prepare else "and prepare=False")
      raise ValueError(f"TFDS dataset {builder.name} is not prepared at {builder.data_dir} {why}")
    # Reopened from its files, so every process reads what process 0 wrote (info included).
    builder = tfds.builder_from_directory(builder.data_dir)
    self.name = builder.name
    self._check_file_format(tfds, builder)
    available = sorted(builder.info.splits.keys())
    if any(part.partition("[")[0].strip() not in available for part in split.split("+")):
      raise ValueError(f"TFDS dataset {builder.name} has no split {split!r} (splits: {available});"
                       " map mdd's split names with data.tfds_split_map, e.g. validation=test")
    features = builder.info.features
    image_feature = _feature_at(features, image_key, "data.tfds_image_key")
    if not (isinstance(image_feature, tfds.features.Image)
            or (isinstance(image_feature, tfds.features.Tensor)
                and np.dtype(image_feature.np_dtype) == np.uint8)):
      raise ValueError(f"data.tfds_image_key={image_key!r} is a "
                       f"{type(image_feature).__name__} feature, not an image")
    caption_feature = _feature_at(features, caption_key, "data.tfds_caption_key")
    self._class_names = (caption_feature.names
                         if isinstance(caption_feature, tfds.features.ClassLabel) else None)
    self._source = builder.as_data_source(split=split)
    self._caption_source = None  # Opened by `caption`, with images left encoded.
    self._builder_dir, self._split = str(builder.data_dir), split

  @staticmethod
  def _builder(tfds, name_or_builder, data_dir):
    if not isinstance(name_or_builder, str):
      return name_or_builder
    if name_or_builder.split("/")[0] == "shape_gen":
      from mdd.data import shapes_tfds  # pylint: disable=g-import-not-at-top,unused-import
    return tfds.builder(name_or_builder, data_dir=data_dir or None)

  @staticmethod
  def _check_file_format(tfds, builder):
    formats = set(builder.info.available_file_formats() or {builder.info.file_format})
    readable = tfds.core.file_adapters.FileFormat.with_random_access()
    if not formats & set(readable):
      found = ", ".join(sorted(str(getattr(f, "value", f)) for f in formats))
      raise ValueError(f"TFDS dataset {builder.name} at {builder.data_dir} is prepared as {found}, "
                       "which cannot be read by index: prepare it with "
                       "file_format='array_record' (another data.tfds_data_dir, or delete it)")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    example = self._source[index]
    image = np.asarray(_value_at(example, self.image_key))
    if image.ndim == 4:  # A sequence of images: the first, as for captions.
      image = image[0]
    crop = (np.random.default_rng((self.seed, int(index))) if self.crop == "random"
            else "center")
    return {"image": images.fit(image, self.resolution, crop),
            "caption": self._caption(_value_at(example, self.caption_key)),
            "index": np.int64(index)}

  def caption(self, index: int) -> str:
    """The caption of example `index`, read without decoding its images."""
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    if self._caption_source is None:
      builder = _import_tfds().builder_from_directory(self._builder_dir)
      self._caption_source = builder.as_data_source(
          split=self._split, decoders=_skip_images(builder.info.features))
    return self._caption(_value_at(self._caption_source[index], self.caption_key))

  def _caption(self, value: Any) -> str:
    value = _first(value)
    if value is None:
      return ""
    if isinstance(value, np.ndarray):
      value = value.item()
    if isinstance(value, bytes):
      return value.decode("utf-8")
    if self._class_names is not None:
      return self._class_names[int(value)]
    return str(value)


def from_config(data_cfg, split: str) -> TfdsSource:
  """The `tfds` entry of `mdd.data.sources.SOURCES`.

  Reads data.tfds_name, tfds_data_dir, tfds_image_key ("image"), tfds_caption_key ("caption"),
  tfds_split_map (""), crop ("center"), seed, resolution / width. Random crops apply to the
  train split only; other splits are center-cropped, so evaluations see a fixed view.
  """
  from mdd.data import loader  # pylint: disable=g-import-not-at-top
  if not data_cfg.get("tfds_name", ""):
    raise ValueError("data.tfds_name must be set for source=tfds")
  crop = data_cfg.get("crop", "center") or "center"
  if crop not in images.CROPS:
    raise ValueError(f"data.crop must be one of {images.CROPS}, got {crop!r}")
  tfds_split = parse_split_map(data_cfg.get("tfds_split_map", "")).get(split, split)
  return TfdsSource(
      data_cfg.tfds_name, tfds_split, data_dir=data_cfg.get("tfds_data_dir", "") or None,
      resolution=loader.image_resolution(data_cfg),
      image_key=data_cfg.get("tfds_image_key", "image") or "image",
      caption_key=data_cfg.get("tfds_caption_key", "caption") or "caption",
      crop=crop if split == "train" else "center", seed=int(data_cfg.get("seed", 0)))
