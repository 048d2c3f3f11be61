"""The GPU benchmark scripts run end to end at toy size on the CPU and report consistent rows."""

import json

import numpy as np
import pytest

from mdd.bench import rates
from mdd.bench import sampler as sampler_bench
from mdd.bench import scaling as scaling_bench
from mdd.bench import train_step as train_step_bench

# Whole benchmark runs (compile + timed steps) at toy size: minutes on 2 cores.
pytestmark = pytest.mark.integration


def test_train_step_rows_and_mfu(tmp_path):
  out = tmp_path / "ts.json"
  payload = train_step_bench.main([
      "--variants=mu", "--grids=4", "--impls=chunked", "--vocab=256", "--tokens_per_step=32",
      "--text_len=8", "--attention=", "--steps=1", "--windows=1", "--profile",
      f"--out={out}"])
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
  (row,) = payload["rows"]
  assert "error" not in row, row
  assert row["batch"] == 2 and row["tokens"] == 16 and np.isfinite(row["last_loss"])
  step_s = row["step_ms"] / 1e3
  np.testing.assert_allclose(row["achieved_tflops"], row["model_tflop_per_step"] / step_s)
  np.testing.assert_allclose(row["mfu_gemm"] * payload["measured_gemm_tflops"],
                             row["achieved_tflops"])
  assert row["mfu_datasheet"] is None  # No datasheet rate for a CPU.
  assert row["profile"]["device_ms_per_step"] > 0 and row["profile"]["categories"]


def test_train_step_reports_a_failing_row_and_goes_on():
  payload = train_step_bench.main([
      "--variants=nope,mu", "--grids=4", "--impls=chunked", "--vocab=256",
      "--tokens_per_step=16", "--text_len=8", "--attention=", "--steps=1", "--windows=1",
      "--remat=0"])
  bad, good = payload["rows"]
  assert "unknown denoiser variant" in bad["error"] and "error" not in good


def test_datasheet_peak():
  assert rates.datasheet_peak("NVIDIA H200") == 989.4e12
  assert rates.datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4e12
  assert rates.datasheet_peak("cpu") is None


def test_sampler_rows_and_overhead(tmp_path):
  payload = sampler_bench.main([
      "--variant=mu", "--vocab=256", "--grids=4", "--steps=2,3", "--batches=1,2",
      "--attention=", "--repeats=1", "--text_len=16", f"--out={tmp_path / 's.json'}"])
  rows = payload["rows"]
  assert [(r["batch"], r["steps"]) for r in rows] == [(2, 2), (2, 3), (1, 3)]
  for r in rows:
    assert "error" not in r, r
    calls = r["steps"] + r["edit_passes"]
    np.testing.assert_allclose(r["overhead"], r["sample_ms"] / (calls * r["forward_ms"]))


def test_weak_scaling_rows_shard_the_state_on_fsdp_and_keep_the_batch_per_device(tmp_path):
  out = tmp_path / "scaling.json"
  payload = scaling_bench.main([
      "--variants=mu", "--grid=4", "--tokens_per_device=32", "--devices=1,2",
      "--meshes=data,fsdp", "--impl=chunked", "--vocab=256", "--text_len=8", "--attention=",
      "--steps=1", "--windows=1", f"--out={out}"])
  assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
  rows = {(r["mesh"], r["devices"]): r for r in payload["rows"]}
  assert set(rows) == {("data", 1), ("data", 2), ("fsdp", 1), ("fsdp", 2)}
  for (mesh, n), row in rows.items():
    assert "error" not in row, row
    assert row["batch_per_device"] == 2 and row["batch"] == 2 * n
    assert np.isfinite(row["last_loss"])
    np.testing.assert_allclose(row["efficiency"], rows[(mesh, 1)]["step_ms"] / row["step_ms"])
  # FSDP splits parameters and optimizer state over the devices; a data mesh replicates them.
  assert rows[("fsdp", 2)]["argument_bytes"] < 0.6 * rows[("data", 2)]["argument_bytes"]
  assert rows[("data", 2)]["argument_bytes"] == rows[("data", 1)]["argument_bytes"]
  # The same global batch and seeds on both meshes: the same first loss.
  np.testing.assert_allclose(rows[("fsdp", 2)]["first_loss"], rows[("data", 2)]["first_loss"],
                             rtol=1e-4)


def test_weak_scaling_refuses_more_devices_than_present():
  with pytest.raises(SystemExit):
    scaling_bench.main(["--variants=mu", "--devices=1,64"])
