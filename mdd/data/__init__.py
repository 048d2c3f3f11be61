"""Data: ShapeGen scenes, user image folders, byte-level text tokens and input pipelines.

TensorFlow-free; the TFDS builder lives in `mdd.data.shapes_tfds` (import it explicitly).
Names are imported lazily, so `python -m mdd.data.shapes` runs its module exactly once.
"""

import importlib

_EXPORTS = {
    "FolderSource": "folder",
    "batch_iterator": "pipeline",
    "batches_from_config": "pipeline",
    "make_source": "pipeline",
    "numeric_fields": "pipeline",
    "ShapeGenSource": "pipeline",
    "TokenizedSource": "pipeline",
    "Obj": "shapes",
    "Scene": "shapes",
    "generate_example": "shapes",
    "render": "shapes",
    "sample_scene": "shapes",
    "scene_from_metadata": "shapes",
    "ByteTokenizer": "text",
    "tokenizer_from_config": "text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"mdd.data.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'mdd.data' has no attribute {name!r}")
