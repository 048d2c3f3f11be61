"""A user's folder of images + manifest.jsonl runs the whole pipeline with the default config
(its held-out evaluations read the validation split the folder source has)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _folder(root, n=96):
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "images"))
  with open(os.path.join(root, "manifest.jsonl"), "w", encoding="utf-8") as f:
    for i in range(n):
      colour = rng.integers(0, 256, 3)
      image = np.full((40, 48, 3), colour, np.uint8)
      image[10:30, 12:36] = 255 - colour
      Image.fromarray(image).save(os.path.join(root, "images", f"{i}.png"))
      f.write(json.dumps({"image": f"images/{i}.png", "caption": f"a box number {i}"}) + "\n")


def test_folder_dataset_runs_every_stage(tmp_path):
  data = str(tmp_path / "data")
  _folder(data)
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  result = subprocess.run(
      [sys.executable, "-m", "mdd.main", "--config=configs/shapes_tiny.py:runlocal",
       f"--workdir={workdir}", "--config.data.source=folder", f"--config.data.folder={data}",
       "--config.data.validation_fraction=0.25", "--config.tokenizer.num_steps=3",
       "--config.tokenizer.eval.num_examples=8", "--config.denoiser_train.num_steps=3",
       "--config.denoiser_train.batch_size=8", "--config.denoiser_train.eval_batches=1",
       "--config.sampler.num_steps=2", "--config.sample.prompts=a box|a red box"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "tokenizer", "eval.json")) as f:
    assert json.load(f)["num_images"] > 0  # read from the folder's validation split
  for path in ("tokens/train/manifest.json", "tokens/validation/manifest.json",
               "denoiser/eval.json", "samples/grid.png", "eval/shapes_geneval.json"):
    assert os.path.exists(os.path.join(workdir, path)), path
