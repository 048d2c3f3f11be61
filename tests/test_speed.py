"""mdd.experiments.speed: every stage measured at toy size; a failing stage is recorded."""

import json

import pytest

from mdd.experiments import speed

_SMALL = ["--set", "tokenizer.batch_size=8", "--set", "denoiser_train.batch_size=8",
          "--set", "eval.shapes_geneval.batch_size=4", "--set", "sampler.num_steps=2",
          "--set", "text.kind=word"]


def test_speed_measures_every_stage(tmp_path, capsys):
  out = tmp_path / "speed.json"
  speed.main(["--config=configs/shapes_tiny.py:runlocal", "--steps=2", f"--out={out}",
              "--workdir", str(tmp_path), *_SMALL])
  results = json.loads(out.read_text())
  assert "cpu" in results["hardware"] and "errors" not in results
  for stage in ("tokenizer", "denoiser"):
    r = results[stage]
    assert r["batch_size"] == 8  # Sharded over the 8 fake devices.
    assert 0 < r["host_ms"] and 0 < r["step_ms"] and 0 < r["loop_ms"] and r["compile_s"] > 0
    assert r["steps_per_s"] == pytest.approx(1e3 / r["loop_ms"])
  assert results["sampler"]["batch_size"] == 4 and results["sampler"]["num_steps"] == 2
  assert results["sampler"]["images_per_s"] > 0
  table = capsys.readouterr().out
  assert "tokenizer" in table and "denoiser" in table and "sampler: 4 prompts x 2 steps" in table


def test_speed_records_a_failing_stage_and_exits_nonzero(tmp_path):
  out = tmp_path / "speed.json"
  # The profiler trace has no device process on CPU: the stage fails, with its reason kept.
  with pytest.raises(SystemExit, match="denoiser"):
    speed.main(["--config=configs/shapes_tiny.py:runlocal", "--steps=1", "--stages=denoiser",
                "--profile", f"--out={out}", *_SMALL])
  results = json.loads(out.read_text())
  assert "no device process" in results["errors"]["denoiser"]
  with pytest.raises(SystemExit, match="unknown stages"):
    speed.main(["--config=configs/shapes_tiny.py", "--stages=vae"])
