"""mdd.workdir: the run folder's paths, its lock, its config files and the loading of trained
parts (refusing corrupt files and non-finite weights)."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import configs
from mdd import workdir as workdir_lib
from mdd.objectives import neighbours as neighbours_lib
from mdd.utils import checkpoints


def test_paths_live_under_the_root(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path / "run"))
  assert run.tokenizer_dir == os.path.join(run.root, "tokenizer")
  assert run.checkpoints_dir("denoiser") == os.path.join(run.root, "denoiser", "checkpoints")
  assert run.neighbours_file == os.path.join(run.root, "tokenizer", "neighbours.npz")
  assert run.tokens_dir("train") == os.path.join(run.root, "tokens", "train")
  assert run.eval_file("fid.json") == os.path.join(run.root, "eval", "fid.json")
  assert run.samples_dir() == os.path.join(run.root, "samples")


def test_lock_excludes_a_second_run_and_is_released(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  with run.lock():
    with open(run.lock_file, encoding="utf-8") as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(ValueError, match=f"in use by pid {os.getpid()}"):
      with run.lock():
        pass
  assert not os.path.exists(run.lock_file)


def test_a_stale_lock_is_taken_over(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  with open(run.lock_file, "w", encoding="utf-8") as f:
    json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "started": 0}, f)
  with run.lock():
    with open(run.lock_file, encoding="utf-8") as f:
      assert json.load(f)["pid"] == os.getpid()
  # Another host's lock cannot be checked from here: it is respected.
  with open(run.lock_file, "w", encoding="utf-8") as f:
    json.dump({"host": "elsewhere", "pid": 1, "started": 0}, f)
  with pytest.raises(ValueError, match="in use by pid 1 on elsewhere"):
    with run.lock():
      pass


def test_config_files_that_are_not_json_name_the_file(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not an mdd workdir"):
    run.load_run_config()
  with open(run.run_config_file, "w", encoding="utf-8") as f:
    f.write('{"mode": ')
  with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
    run.load_run_config()


def test_a_truncated_neighbour_table_is_a_clear_error(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  table = neighbours_lib.NeighbourTable(np.arange(8, dtype=np.int32).reshape(4, 2),
                                        np.ones((4, 2), np.float32))
  neighbours_lib.save_table(run.neighbours_file, table)
  assert run.load_neighbours().neighbours.shape == (4, 2)
  with open(run.neighbours_file, "r+b") as f:
    f.truncate(40)
  with pytest.raises(ValueError, match="neighbours.npz is corrupt"):
    run.load_neighbours()
  os.remove(run.neighbours_file)
  with pytest.raises(FileNotFoundError, match="train_tokenizer"):
    run.load_neighbours()


def test_sampling_refuses_non_finite_weights(tmp_path):
  """A denoiser checkpoint whose EMA weights hold a NaN is refused with one line."""
  config = configs.load("shapes_tiny:runlocal")
  run = workdir_lib.Workdir(str(tmp_path))
  vocab = 16
  table = neighbours_lib.NeighbourTable(np.arange(vocab, dtype=np.int32)[:, None],
                                        np.ones((vocab, 1), np.float32))
  system = run.denoiser_system(config, table)
  params = jax.jit(system.init_params)(jax.random.key(0))
  poisoned = jax.tree.map(lambda x: x, params)
  leaf = jax.tree.leaves(poisoned)[0]
  poisoned = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan) if x is leaf else x,
                          poisoned)
  manager = checkpoints.manager(run.checkpoints_dir("denoiser"), async_save=False)
  manager.save(3, args=ocp.args.StandardSave({"params": params, "ema_params": poisoned}))
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(ValueError, match=r"denoiser checkpoint \(step 3\) .* non-finite weights"):
    run.load_denoiser_params(system, config)
  config.denoiser_train.ema_decay = 0.0  # the raw parameters are finite: they load
  loaded, step = run.load_denoiser_params(system, config)
  assert step == 3 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(loaded))
