"""Data: ShapeGen scenes, user image folders, byte-level text tokens and the input loader, token shards and the ShapeGenEval prompt set.

TensorFlow-free; the TFDS builder lives in `mdd.data.shapes_tfds` (import it explicitly).
Names are imported lazily, so `python -m mdd.data.shapes` runs its module exactly once.
"""

import importlib

_EXPORTS = {
    "FolderSource": "folder",
    "batch_iterator": "loader",
    "batches_from_config": "loader",
    "make_source": "loader",
    "numeric_fields": "loader",
    "ShapeGenSource": "loader",
    "TokenizedSource": "loader",
    "Obj": "shapes",
    "Scene": "shapes",
    "generate_example": "shapes",
    "render": "shapes",
    "sample_scene": "shapes",
    "scene_from_metadata": "shapes",
    "ByteTokenizer": "text",
    "byte_tokenizer_from_config": "text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"mdd.data.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'mdd.data' has no attribute {name!r}")
