"""The data sources a config can name (`config.data.source`), by name.

A source is a random-access reader (`len`, `source[i] -> dict` with `image` uint8 [H, W, 3] and
`caption`); each entry names the function `(data_cfg, split) -> source` that builds it and the
`data` fields it needs. Adding a source is one module plus one entry here; `mdd.validate` reads
this table.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Source:
  target: str                     # "module:function(data_cfg, split) -> source"
  required: tuple[str, ...] = ()  # fields of config.data that must be non-empty
  hint: str = ""                  # what a required field should hold
  heldout_split: str = "validation"  # the split evaluations read by default
  splits: tuple[str, ...] = ()    # the splits it has (empty: known only to the dataset)

  def resolve(self):
    module, _, name = self.target.partition(":")
    return getattr(importlib.import_module(module), name)


SOURCES: dict[str, Source] = {
    # Procedural ShapeGen scenes (the embedded default; no files needed).
    "shapes": Source("mdd.data.loader:shapegen_from_config", heldout_split="heldout",
                     splits=("train", "validation", "heldout")),
    # A user folder of images with a manifest.jsonl of {"image", "caption"} lines.
    "folder": Source("mdd.data.folder:from_config", required=("folder",),
                     hint="a directory with manifest.jsonl", splits=("train", "validation")),
    # mdd's ArrayRecord shards of image-caption pairs (written by python -m mdd.data.convert).
    "arrayrecord": Source("mdd.data.records:from_config", required=("records",),
                          hint="a directory of train-*/validation-*.array_record shards from "
                               "python -m mdd.data.convert, or a glob or comma list of shards",
                          splits=("train", "validation")),
    # Any prepared TensorFlow Datasets dataset (needs the `tf` extra).
    "tfds": Source("mdd.data.tfds_source:from_config", required=("tfds_name",),
                   hint="a TFDS name such as coco_captions/2017 or shape_gen/res32 (prepared as "
                        "array_record by process 0 in data.tfds_data_dir)"),
}


def heldout_split(data_cfg) -> str:
  """The split a held-out evaluation reads for the configured source."""
  return SOURCES[data_cfg.source].heldout_split
