"""Default data config: which source, image size, text length, split sizes, loader threads.

Experiment configs (`configs/*.py`) take this section as `config.data` and override fields;
`mdd.data.make_source(config.data, split)` is the one place that reads it.
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The data section; every field documented inline."""
  c = ml_collections.ConfigDict()
  c.source = "shapes"        # shapes | folder | tfds
  c.resolution = 32          # image height (and width unless `width` is set), pixels
  c.width = 0                # image width for a non-square aspect; 0 = square
  c.seed = 0                 # ShapeGen content seed (shuffling uses the trainer's seed)
  # Text: byte-level tokens, pad id 0, end marker 1; longer captions are cut and counted.
  c.max_text_len = 64
  c.append_eos = True
  # ShapeGen: number of examples per split and optional tag subset ("" = all six tags,
  # else a comma list such as "single_object,colors").
  c.train_size = 20_000
  c.validation_size = 1_000
  c.heldout_size = 1_000
  c.tags = ""
  # Render ShapeGen once into a .npy memmap here ("" = render on the fly, ~0.2-0.4 ms per
  # image); a relative path is under the workdir (`mdd.main`).
  c.cache_dir = ""
  c.cache_workers = 0        # processes rendering the cache (0/1 = in-process)
  # User folder: `folder/manifest` lists {"image": relative path, "caption": str} per line.
  c.folder = ""
  c.manifest = "manifest.jsonl"
  c.verify_images = True     # decode every image once at start; unreadable ones are skipped
  c.validation_fraction = 0.0  # share of entries (by path hash) in the validation split
  # TFDS (needs TensorFlow): e.g. "shape_gen/res32", built locally on first use.
  c.tfds_name = ""
  c.tfds_data_dir = ""
  # Loader: threads reading examples and batches prefetched ahead (0 threads = inline).
  c.num_threads = 0
  c.prefetch = 2
  return c
