"""DPG-Bench's image layout: one 2x2 grid PNG per prompt file, named after it.

DPG-Bench ships its prompts as `prompts/<name>.txt` (one prompt per file) and scores
`OUT/<name>.png`, a grid of four samples side by side without padding, which its script cuts back
into tiles of the generation resolution. Sample j of the i-th prompt file (sorted by name) uses
seed `seed + 4 * i + j`.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

GenerateFn = Callable[[Sequence[str], Sequence[int]], np.ndarray]
GRID = 2  # 2 x 2 samples per prompt
SAMPLES_PER_PROMPT = GRID * GRID


def read_prompt_files(prompts_dir: str) -> list[tuple[str, str]]:
  """[(name without .txt, prompt text)] of every `.txt` file in `prompts_dir`, sorted by name."""
  if not os.path.isdir(prompts_dir):
    raise ValueError(f"DPG-Bench prompt directory not found: {prompts_dir!r}")
  out = []
  for filename in sorted(os.listdir(prompts_dir)):
    if filename.endswith(".txt"):
      with open(os.path.join(prompts_dir, filename), encoding="utf-8") as f:
        out.append((filename[:-len(".txt")], f.read().strip()))
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
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  prompts = read_prompt_files(prompts_dir)
  os.makedirs(outdir, exist_ok=True)
  paths = [os.path.join(outdir, f"{name}.png") for name, _ in prompts]
  jobs = [(i, j) for i, path in enumerate(paths) if not os.path.isfile(path)
          for j in range(SAMPLES_PER_PROMPT)]
  pending: dict[int, list] = {}
  with tqdm(total=len(jobs), desc="DPG-Bench", unit="img", leave=False) as progress:
    for start in range(0, len(jobs), batch_size):
      chunk = jobs[start:start + batch_size]
      images = np.asarray(generate_fn([prompts[i][1] for i, _ in chunk],
                                      [seed + SAMPLES_PER_PROMPT * i + j for i, j in chunk]))
      if images.shape[0] != len(chunk):
        raise ValueError(f"generate_fn returned {images.shape[0]} images for {len(chunk)} "
                         "prompts")
      for (i, j), image in zip(chunk, images):
        pending.setdefault(i, [None] * SAMPLES_PER_PROMPT)[j] = image
        if all(im is not None for im in pending[i]):
          Image.fromarray(make_grid(pending.pop(i))).save(paths[i])
      progress.update(len(chunk))
  return paths
