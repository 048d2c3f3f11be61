"""DPG-Bench's image layout: one 2x2 grid PNG per prompt file, named after it.

DPG-Bench ships its prompts as `prompts/<name>.txt` (one prompt per file) and scores
`OUT/<name>.png`, a grid of four samples side by side without padding, which its script cuts back
into tiles of the generation resolution. Sample j of the i-th prompt file (sorted by name) uses
seed `seed + 4 * i + j`. The prompt folder and OUT may be local or URLs (`gs://`, through
`mdd.utils.fileio`); each grid is written whole, so a rerun skips exactly the finished ones.
With several processes, process 0 reads the prompts and lists the finished grids for all of
them (the same batches everywhere) and alone writes (see `geneval_layout`).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mdd.eval import geneval_layout
from mdd.utils import fileio

GenerateFn = geneval_layout.GenerateFn
GRID = 2  # 2 x 2 samples per prompt
SAMPLES_PER_PROMPT = GRID * GRID


def read_prompt_files(prompts_dir: str) -> list[tuple[str, str]]:
  """[(name without .txt, prompt text)] of every `.txt` file in `prompts_dir`, sorted by name."""
  if not fileio.isdir(prompts_dir):
    raise ValueError(f"DPG-Bench prompt directory not found: {prompts_dir!r}")
  out = []
  for filename in fileio.listdir(prompts_dir):
    if filename.endswith(".txt"):
      text = fileio.read_text(os.path.join(prompts_dir, filename))
      out.append((filename[:-len(".txt")], text.strip()))
  if not out:
    raise ValueError(f"no .txt prompt files in {prompts_dir!r}")
  return out


def make_grid(images: Sequence[np.ndarray]) -> np.ndarray:
  """Four uint8 [H, W, 3] samples -> one [2H, 2W, 3] grid, row-major, no padding."""
  images = np.asarray(images)
  if images.shape[0] != SAMPLES_PER_PROMPT or images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"need {SAMPLES_PER_PROMPT} uint8 [H, W, 3] samples, got "
                     f"{images.dtype} {images.shape}")
  _, height, width, channels = images.shape
  grid = images.reshape(GRID, GRID, height, width, channels).transpose(0, 2, 1, 3, 4)
  return grid.reshape(GRID * height, GRID * width, channels)


def split_grid(grid: np.ndarray) -> np.ndarray:
  """Inverse of `make_grid`: [2H, 2W, 3] -> [4, H, W, 3]."""
  grid = np.asarray(grid)
  if grid.ndim != 3 or grid.shape[0] % GRID or grid.shape[1] % GRID:
    raise ValueError(f"grid sides must be multiples of {GRID}, got {grid.shape}")
  height, width = grid.shape[0] // GRID, grid.shape[1] // GRID
  tiles = grid.reshape(GRID, height, GRID, width, grid.shape[2]).transpose(0, 2, 1, 3, 4)
  return tiles.reshape(SAMPLES_PER_PROMPT, height, width, grid.shape[2])


def generate_grids(generate_fn: GenerateFn, prompts_dir: str, outdir: str,
                   batch_size: int = 64, seed: int = 0) -> list[str]:
  """Writes `outdir/<name>.png` for every prompt file; skips grids already written."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  from mdd.utils import sharding  # pylint: disable=g-import-not-at-top  (JAX: only to generate)

  def plan():
    prompts = read_prompt_files(prompts_dir)
    fileio.makedirs(outdir)
    done = set(fileio.listdir(outdir))
    return prompts, [i for i, (name, _) in enumerate(prompts) if f"{name}.png" not in done]

  prompts, todo = sharding.on_main_process(plan)
  paths = [os.path.join(outdir, f"{name}.png") for name, _ in prompts]

  def on_complete(i, images):
    if sharding.is_main_process():
      geneval_layout.write_png(paths[i], make_grid(images))

  geneval_layout.generate_per_prompt(
      generate_fn, [text for _, text in prompts], todo, SAMPLES_PER_PROMPT, batch_size, seed,
      on_complete, "DPG-Bench")
  sharding.sync_processes(f"grids written: {outdir}")
  return paths


def evaluate(generator, section, workdir: str) -> dict:
  """The `dpg` entry of `mdd.eval.registry`: DPG-Bench's 2 x 2 grids of the trained model."""
  outdir = section.outdir or os.path.join(workdir, "eval", "dpg")
  return generate_grids(generator.generate_fn(int(section.batch_size)), section.prompts_dir,
                        outdir, batch_size=int(section.batch_size), seed=int(section.seed))
