"""Evaluation prompts from the configured dataset: captions of its held-out split.

FID and the sample stage prompt a model with text like its training captions: the captions of
split `sources.heldout_split(data_cfg)` (`validation` for a folder or a TFDS dataset).

* `heldout_indices(num_examples, n, seed)`: which examples, in order: a permutation of the split
  drawn from `seed`, cycled when `n` is larger than the split (a caption then repeats; the
  images generated for it differ by their sample seeds). The same `(n, seed)` always gives the
  same captions.
* `validation_captions(data_cfg, n, seed)`: their captions. A source that offers
  `caption(index)` is asked for the caption alone (folder: the manifest entry; TFDS: the record
  with its image left encoded); any other source is indexed (its image decoded and dropped).
* `validation_image_batches(...)`: the images of the same examples, each once (the first
  `min(n, len(split))` indices), for FID reference statistics that match the prompts.
* ShapeGen keeps its own prompt set, ShapeGenEval's `main` prompts, the benchmark its results
  are reported on: `prompts_for` gives those for `uses_prompt_set(data_cfg)`.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from mdd.data import loader
from mdd.data import prompts as prompts_lib
from mdd.data import sources


def uses_prompt_set(data_cfg) -> bool:
  """Whether the data is ShapeGen (procedural, or its TFDS build), which has a prompt set."""
  return data_cfg.source == "shapes" or (
      data_cfg.source == "tfds"
      and str(data_cfg.get("tfds_name", "")).split("/")[0] == "shape_gen")


def heldout_indices(num_examples: int, n: int, seed: int = 0) -> np.ndarray:
  """`n` example indices: a `seed` permutation of `range(num_examples)`, cycled past its end."""
  if num_examples < 1:
    raise ValueError("the held-out split is empty: no captions to prompt with")
  if n < 0:
    raise ValueError(f"need n >= 0 captions, got {n}")
  order = np.random.default_rng(int(seed)).permutation(num_examples)
  return order[np.arange(n) % num_examples]


def _heldout_source(data_cfg):
  return loader.make_source(data_cfg, sources.heldout_split(data_cfg))


def _caption_reader(source) -> Callable[[int], str]:
  """`caption(index)` of the first wrapped source that has one, else indexing `source`."""
  layer = source
  while layer is not None:
    if callable(getattr(layer, "caption", None)):
      return layer.caption
    layer = getattr(layer, "source", None)  # TokenizedSource and similar wrappers.
  return lambda index: str(source[index]["caption"])


def validation_captions(data_cfg, n: int, seed: int = 0) -> list[str]:
  """`n` captions of the held-out split of `data_cfg`'s dataset (see `heldout_indices`)."""
  source = _heldout_source(data_cfg)
  read = _caption_reader(source)
  return [read(int(i)) for i in heldout_indices(len(source), n, seed)]


def validation_image_batches(data_cfg, n: int, seed: int = 0,
                             batch_size: int = 50) -> Iterator[np.ndarray]:
  """uint8 [B, H, W, 3] batches of the examples `validation_captions(data_cfg, n, seed)`
  prompts with, each example once."""
  source = _heldout_source(data_cfg)
  indices = heldout_indices(len(source), min(n, len(source)), seed)
  for start in range(0, len(indices), batch_size):
    yield np.stack([np.asarray(source[int(i)]["image"], np.uint8)
                    for i in indices[start:start + batch_size]])


def prompts_for(data_cfg, n: int, seed: int = 0) -> list[str]:
  """`n` evaluation prompts: ShapeGenEval's `main` set in order (cycled) for ShapeGen, else
  `validation_captions(data_cfg, n, seed)`."""
  if uses_prompt_set(data_cfg):
    prompts = [m["prompt"] for m in prompts_lib.load_prompts("main")]
    return [prompts[i % len(prompts)] for i in range(n)]
  return validation_captions(data_cfg, n, seed)
