"""mdd.experiments.speed: every stage measured at toy size; a failing stage is recorded."""

import json

import pytest

from mdd.experiments import speed

_SMALL = ["--set", "tokenizer.batch_size=8", "--set", "denoiser_train.batch_size=8",
          "--set", "eval.shapes_geneval.batch_size=4", "--set", "sampler.num_steps=2",
          "--set", "text.kind=word"]


def test_speed_measures_every_stage_and_profiles_the_cpu_ops_by_kind(tmp_path, capsys):
  out = tmp_path / "speed.json"
  speed.main(["--config=configs/shapes_tiny.py:runlocal", "--steps=2", "--profile",
              f"--out={out}", "--workdir", str(tmp_path), *_SMALL])
  results = json.loads(out.read_text())
  assert "cpu" in results["hardware"] and "errors" not in results
  for stage in ("tokenizer", "denoiser"):
    r = results[stage]
    assert r["batch_size"] == 8  # Sharded over the 8 fake devices.
    assert 0 < r["host_ms"] and 0 < r["step_ms"] and 0 < r["loop_ms"] and r["compile_s"] > 0
    assert r["init_s"] > 0
    assert r["steps_per_s"] == pytest.approx(1e3 / r["loop_ms"])
  assert results["sampler"]["batch_size"] == 4 and results["sampler"]["num_steps"] == 2
  assert results["sampler"]["images_per_s"] > 0
  table = capsys.readouterr().out
  assert "tokenizer" in table and "denoiser" in table and "sampler: 4 prompts x 2 steps" in table
  assert "denoiser device time" in table
  # The profile: device time per train step, its kernels, grouped by kind of op.
  profile = results["denoiser"]["profile"]
  assert profile["device_ms_per_step"] > 0 and profile["kernels"] and profile["kinds"]
  kinds = [k["kind"] for k in profile["kinds"]]
  assert not any("ThunkExecutor" in k or "ThreadPool" in k for k in kinds)  # ops only
  assert all(not k[-1].isdigit() for k in kinds)  # instance numbers stripped


def test_speed_records_a_failing_stage_and_exits_nonzero(tmp_path):
  out = tmp_path / "speed.json"
  with pytest.raises(SystemExit, match="denoiser"):
    speed.main(["--config=configs/shapes_tiny.py:runlocal", "--steps=1",
                "--stages=tokenizer,denoiser", f"--out={out}", *_SMALL,
                "--set", "denoiser.variant=nope"])
  results = json.loads(out.read_text())
  assert "nope" in results["errors"]["denoiser"] and "tokenizer" in results  # the other ran
  with pytest.raises(SystemExit, match="unknown stages"):
    speed.main(["--config=configs/shapes_tiny.py", "--stages=vae"])
