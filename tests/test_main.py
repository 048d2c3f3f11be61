"""The launcher: config validation (one line per problem), mode dispatch, mesh fitting."""

import os
import subprocess
import sys

import ml_collections
import pytest

from mdd import config_validation, modes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tiny(arg=None):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("shapes_tiny",
                                                os.path.join(REPO, "configs", "shapes_tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _run_main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "mdd.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_default_config_is_valid():
  assert config_validation.validate(_load_tiny()) == []
  assert config_validation.validate(_load_tiny("runlocal")) == []


def test_each_problem_is_one_clear_line():
  config = _load_tiny()
  config.mode = "trian"
  config.mesh.data = 0
  config.mesh.fsdp = -1
  config.data.source = "folder"
  config.denoiser.depth = -2
  problems = config_validation.validate(config)
  assert any(p.startswith("denoiser.depth=-2: must be an int >= 0") for p in problems)
  assert any("mode='trian'" in p for p in problems)
  assert any(p.startswith("mesh.data=0") for p in problems)
  assert any(p.startswith("data.folder: required") for p in problems)
  assert all("\n" not in p for p in problems)


def test_mesh_that_does_not_fit_the_devices():
  config = _load_tiny()
  config.mesh.update(data=3, fsdp=1, tensor=1)
  (problem,) = config_validation.check_mesh_fits(config, 8)
  assert "needs 3 devices, 8 are available" in problem
  config.mesh.update(data=-1, fsdp=3)
  assert "does not divide" in config_validation.check_mesh_fits(config, 8)[0]
  config.mesh.update(data=-1, fsdp=2, tensor=2)
  assert config_validation.check_mesh_fits(config, 8) == []


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="is not one of"):
    modes.resolve_mode("train_everything")


def test_cli_reports_bad_config_in_one_line_and_exits_2(tmp_path):
  result = _run_main("--config=configs/shapes_tiny.py", f"--workdir={tmp_path}",
                     "--config.mesh.tensor=0", "--config.data.resolution=7")
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith("config error:")]
  assert len(lines) == 2, result.stderr
  assert "mesh.tensor=0" in lines[0] and "data.resolution=7" in lines[1]
  assert "Traceback" not in result.stderr


def test_cli_requires_workdir():
  result = _run_main("--config=configs/shapes_tiny.py")
  assert result.returncode != 0 and "--workdir is required" in result.stderr
