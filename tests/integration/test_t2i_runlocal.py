"""The real-data config's `runlocal` arg runs every stage through the launcher (on ShapeGen).

Slow (about 3 minutes): CI runs the same config and stages on real image-text records in
`test_arrayrecord_t2i.py`; this one adds the ShapeGen source and ShapeGenEval (`-m slow`).
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_t2i_runlocal_runs_every_stage(tmp_path):
  workdir = str(tmp_path / "t2i")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  result = subprocess.run([sys.executable, "-m", "mdd.main", "--config=configs/t2i.py:runlocal",
                           f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  for stage in ("train_tokenizer", "pretokenize", "train", "sample", "eval"):
    assert f"=== pipeline: {stage} ===" in result.stdout
  for path in ("config.json", "tokenizer/eval.json", "tokenizer/neighbours.npz",
               "tokens/train/manifest.json", "denoiser/eval.json", "samples/grid.png"):
    assert os.path.exists(os.path.join(workdir, path)), path
  with open(os.path.join(workdir, "eval", "shapes_geneval.json")) as f:
    summary = json.load(f)
  assert summary["num_images"] == 504 and 0.0 <= summary["overall"] <= 1.0
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["denoiser"]["variant"] == "mu"
