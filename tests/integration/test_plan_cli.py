"""`--config.mode=plan` through `python -m mdd.main`, on 8 fake CPU devices per subprocess."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "--config=configs/t2i.py:runlocal"
PLAN = ["--config.mode=plan", "--config.mesh.data=1", "--config.mesh.fsdp=8"]


def _run(workdir, *args, log_level=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  if log_level is not None:  # The tests' conftest silences XLA's C++ warnings by default.
    env["TF_CPP_MIN_LOG_LEVEL"] = log_level
  env.pop("MDD_TRACEBACK", None)
  return subprocess.run([sys.executable, "-m", "mdd.main", f"--workdir={workdir}", CONFIG,
                         *PLAN, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def test_a_3b_config_that_cannot_fit_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  result = _run(workdir, "--config.denoiser.variant=3B", "--config.plan.device_memory_gb=4")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith("mdd: error: ValueError: does not fit: "), lines[0]
  assert " GiB per device > 4 GiB; largest term: optimizer state " in lines[0]
  assert "Traceback" not in result.stderr
  plan = json.loads((workdir / "plan.json").read_text())
  assert plan["fits"] is False and plan["largest_term"] == "optimizer state"
  assert plan["state"]["optimizer"] > 4 * 2 ** 30 / 2  # 3B's AdamW state alone: ~3 GiB/device


def test_a_small_config_fits_and_prints_both_columns(tmp_path):
  workdir = tmp_path / "run"
  result = _run(workdir, "--config.denoiser.variant=mu", "--config.plan.device_memory_gb=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "temporaries" in result.stdout and ": fits (compiled total" in result.stdout
  plan = json.loads((workdir / "plan.json").read_text())
  assert plan["fits"] and plan["compiled"]["temp"] > 0 and plan["mesh"]["fsdp"] == 8
  assert not (workdir / "config.json").exists()  # a plan records no run


def test_cpu_needs_a_stated_device_memory(tmp_path):
  result = _run(tmp_path / "run", "--config.denoiser.variant=mu")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
  assert "reports no memory limit" in lines[0] and "--config.plan.device_memory_gb=" in lines[0]
  bad = _run(tmp_path / "run", "--config.plan.device_memory_gb=-1")
  assert bad.returncode == 2 and "config error: plan.device_memory_gb=-1" in bad.stderr


def test_sharded_train_step_compiles_without_involuntary_rematerialization(tmp_path):
  """The t2i runlocal denoiser step compiled by the plan mode on 8 fake devices with data, FSDP
  and tensor axes: XLA's partitioner never falls back to replicating a tensor to reshard it (it
  logs "Involuntary full rematerialization" to stderr when it does)."""
  for data, fsdp, tensor in ((2, 2, 2), (1, 4, 2)):
    result = _run(tmp_path / f"run_{data}{fsdp}{tensor}", f"--config.mesh.data={data}",
                  f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}",
                  "--config.plan.device_memory_gb=80", log_level="0")  # XLA's warnings on.
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(compiled total" in result.stdout
    assert "rematerialization" not in result.stderr.lower(), [
        line[:300] for line in result.stderr.splitlines() if "rematerial" in line.lower()]
