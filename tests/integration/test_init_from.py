"""Resolution schedules through the launcher: a 64 px run started from a 32 px run
(`denoiser_train.init_from`) copies its tokenizer, starts from its final EMA weights with a fresh
optimizer, trains, samples at 64 px, and resumes from its own checkpoints afterwards."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from test_end_to_end import _main  # The toy overrides (TOY) and the launcher call.

SOURCE_STAGES = "--config.pipeline_stages=train_tokenizer,pretokenize,train"
# Both runs: one block each in the denoiser and the text encoder (less to compile).
SMALL = ["--config.denoiser.depth=1", "--config.text.depth=1"]
# Step 0 of a warm-up schedule has learning rate 0, so the checkpoint of step 1 holds the
# parameters the run started from; steps 2 and 3 train.
TARGET = ["--config.data.resolution=64", "--config.denoiser_train.num_steps=3",
          "--config.denoiser_train.optim.warmup_steps=10", "--config.denoiser_train.ckpt_every=1",
          "--config.denoiser_train.keep_checkpoints=3"]


def _train_state(workdir: str, step: int) -> dict:
  """The denoiser's saved train state at `step`, as nested dicts of numpy arrays."""
  path = os.path.join(workdir, "denoiser", "checkpoints", str(step), "default")
  with ocp.PyTreeCheckpointer() as checkpointer:
    return jax.tree.map(np.asarray, checkpointer.restore(path))


def _adam_counts(state: dict) -> list[int]:
  return [int(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state["opt_state"])
          if "count" in jax.tree_util.keystr(path)]


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("init_from")
  source, target = str(root / "px32"), str(root / "px64")
  cache = f"--config.compilation_cache_dir={root / 'jax_cache'}"
  result = _main(source, SOURCE_STAGES, cache, *SMALL)
  assert result.returncode == 0, result.stderr[-3000:]
  result = _main(target, *TARGET, *SMALL, f"--config.denoiser_train.init_from={source}", cache,
                 "--config.pipeline_stages=train_tokenizer,pretokenize,train,sample")
  assert result.returncode == 0, result.stderr[-3000:]
  return source, target, cache, result.stdout + result.stderr


def test_the_tokenizer_is_the_source_runs_and_encodes_the_new_resolution(runs):
  source, target, _, log = runs
  with open(os.path.join(target, "tokenizer", "copied_from.json")) as f:
    assert json.load(f) == {"source": source, "step": 4}
  assert "copied, not trained here" in log
  assert not os.path.exists(os.path.join(target, "tokenizer", "metrics.jsonl"))  # no training
  for name in ("neighbours.npz", "tokenizer_config.json"):
    with open(os.path.join(source, "tokenizer", name), "rb") as a, \
         open(os.path.join(target, "tokenizer", name), "rb") as b:
      assert a.read() == b.read(), name
  with open(os.path.join(target, "tokens", "train", "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["image_shape"] == [64, 64, 3] and manifest["token_shape"] == [16, 16]


def test_the_run_starts_from_the_source_ema_weights_with_a_fresh_optimizer(runs):
  source, target, _, log = runs
  final = _train_state(source, 4)
  first = _train_state(target, 1)
  assert "initialised from" in log and "ema_params of step 4" in log
  # The source's EMA differs from its raw parameters, so this tells which one was loaded.
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(final["ema_params"]),
                                                      jax.tree.leaves(final["params"])))
  _assert_trees_equal(first["params"], final["ema_params"])  # both the denoiser and the text
  assert set(first["params"]) == {"denoiser", "text"}
  assert _adam_counts(final) and set(_adam_counts(final)) == {4}
  assert set(_adam_counts(first)) == {1} and int(first["step"]) == 1
  # The moments hold one step's gradients, not the source's 4 steps (mu = (1 - b1) g1).
  last = _train_state(target, 3)
  moved = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(last["params"]),
                                                    jax.tree.leaves(first["params"]))]
  assert sum(moved) > len(moved) // 2  # It trains from there.


def test_the_run_samples_at_the_new_resolution(runs):
  _, target, _, _ = runs
  pngs = [p for p in os.listdir(os.path.join(target, "samples")) if p[:4].isdigit()]
  assert len(pngs) == 4
  image = np.asarray(Image.open(os.path.join(target, "samples", sorted(pngs)[0])))
  assert image.shape == (64, 64, 3)


def test_a_rerun_resumes_its_own_checkpoint_and_ignores_init_from(runs):
  source, target, cache, _ = runs
  before = _train_state(target, 3)
  result = _main(target, *TARGET[:1], "--config.denoiser_train.num_steps=4",
                 *TARGET[2:], *SMALL, f"--config.denoiser_train.init_from={source}", cache,
                 "--config.pipeline_stages=train_tokenizer,train")
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stdout + result.stderr
  assert "resuming from checkpoint step 3" in log and "initialised from" not in log
  assert "copied, not trained here" in log
  _assert_trees_equal(_train_state(target, 3)["params"], before["params"])
  assert set(_adam_counts(_train_state(target, 4))) == {4}


def test_a_source_that_is_not_a_trained_run_is_one_line_before_training(runs, tmp_path):
  source, _, _, _ = runs
  empty = tmp_path / "empty"
  empty.mkdir()
  untrained = tmp_path / "untrained"  # A run folder whose denoiser never trained.
  untrained.mkdir()
  with open(os.path.join(source, "config.json")) as f, open(untrained / "config.json", "w") as g:
    g.write(f.read())
  for folder, expected in ((empty, "is not an mdd workdir"),
                           (untrained, "has no denoiser checkpoint")):
    workdir = tmp_path / f"run_{folder.name}"
    result = _main(str(workdir), f"--config.denoiser_train.init_from={folder}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "denoiser_train.init_from" in lines[0], lines
    assert expected in lines[0]
    assert not os.path.exists(workdir / "tokenizer")


def test_the_weights_land_in_the_loops_shardings_on_a_2x2x2_mesh(runs, tmp_path):
  """The warm start on 8 devices: every leaf of params and EMA keeps the sharding the loop
  compiles its step with, and holds the source's final EMA; the optimizer state is fresh."""
  from mdd import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from mdd.train import denoiser as denoiser_train  # pylint: disable=import-outside-toplevel
  from mdd.train import loop  # pylint: disable=import-outside-toplevel
  from mdd.utils import checkpoints, sharding  # pylint: disable=import-outside-toplevel
  source, target, _, _ = runs
  run_dir = workdir_lib.Workdir(target)
  config = run_dir.load_run_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_from_config(config)
  task = denoiser_train.make_task(config, run_dir.denoiser_system(config), lambda step: iter(()))
  task.warm_start = denoiser_train._warm_start(  # pylint: disable=protected-access
      run_dir, workdir_lib.Workdir(source))
  manager = checkpoints.manager(str(tmp_path / "checkpoints"), async_save=False,
                                item_names=loop.CHECKPOINT_ITEMS)
  state, shardings, start, _ = loop.restore_or_init(task, manager, mesh, rules, jax.random.key(0))
  manager.close()
  assert start == 0 and int(state.step) == 0
  final = _train_state(source, 4)["ema_params"]
  for name in ("params", "ema_params"):
    leaves = jax.tree.leaves(getattr(state, name))
    assert any(not leaf.sharding.is_fully_replicated for leaf in leaves)
    for leaf, want, saved in zip(leaves, jax.tree.leaves(getattr(shardings, name)),
                                 jax.tree.leaves(final)):
      assert leaf.sharding == want
      np.testing.assert_array_equal(np.asarray(leaf), saved)
  assert all(int(count) == 0 for path, count in jax.tree_util.tree_leaves_with_path(
      state.opt_state) if "count" in jax.tree_util.keystr(path))
