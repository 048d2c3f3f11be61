"""The launcher: config validation (one line per problem), mode dispatch, mesh fitting."""

import os
import subprocess
import sys

import ml_collections
import pytest

from mdd import stages as modes
from mdd import validate as config_validation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def test_patch_size_must_divide_the_token_grid():
  config = _load_tiny()  # 32 px at f = 4: an 8-token side
  config.denoiser.patch_size = 2
  assert config_validation.validate(config) == []
  config.denoiser.patch_size = 3
  (problem,) = config_validation.validate(config)
  assert problem.startswith("denoiser.patch_size=3: does not divide the 8-token side")
  config.denoiser.patch_size = 0
  (problem,) = config_validation.validate(config)
  assert problem.startswith("denoiser.patch_size=0: must be an int >= 1")


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


def test_compilation_cache_lives_in_the_workdir_and_is_reused(tmp_path):
  """`compilation_cache_dir` (relative) puts JAX's persistent cache under the workdir; a second
  process compiling the same program finds it there instead of adding another entry."""
  script = (
      "import sys, jax, jax.numpy as jnp, ml_collections\n"
      "from mdd import main\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "c = ml_collections.ConfigDict({'compilation_cache_dir': 'jax_cache'})\n"
      "print(main.enable_compilation_cache(c, sys.argv[1]))\n"
      "hits = []\n"
      "jax.monitoring.register_event_listener(\n"
      "    lambda event, **kw: hits.append(event) if 'cache_hits' in event else None)\n"
      "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()\n"
      "print(len(hits))\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  runs = [subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120) for _ in range(2)]
  cache = tmp_path / "jax_cache"
  assert runs[0].returncode == 0, runs[0].stderr[-2000:]
  assert runs[0].stdout.split() == [str(cache), "0"]  # Compiled, no hit.
  first = sorted(p.name for p in cache.iterdir())
  assert first, "nothing was cached"
  assert runs[1].returncode == 0, runs[1].stderr[-2000:]
  path, hits = runs[1].stdout.split()
  assert path == str(cache) and int(hits) >= 1  # Loaded from the cache.
  assert sorted(p.name for p in cache.iterdir()) == first
  off = ml_collections.ConfigDict({"compilation_cache_dir": ""})
  from mdd import main as main_lib  # pylint: disable=import-outside-toplevel
  assert main_lib.enable_compilation_cache(off, str(tmp_path)) == ""
