"""mdd.workdir: the run folder's paths, its lock, its config files and the loading of trained
parts (refusing corrupt files and non-finite weights)."""

import json
import logging
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import configs
from mdd import workdir as workdir_lib
from mdd.objectives import neighbours as neighbours_lib
from mdd.utils import checkpoints
from mdd.utils import sharding
import sampling_fixtures


def _some_params(system):
  """`system.init_params`'s tree (logical boxes included) with values drawn by NumPy: loading
  and checking checkpoints needs some finite weights, not a compiled init (seconds per config)."""
  return jax.tree.map(jnp.asarray, sampling_fixtures.random_params(
      jax.eval_shape(system.init_params, jax.random.key(0)), 0))


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
  params = _some_params(system)
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


def _denoiser_run(root, config, vocab):
  """A run folder with config.json and one denoiser checkpoint (params + a distinct EMA) of the
  system `config` builds at `vocab` codes; returns (Workdir, system, saved EMA params)."""
  run = workdir_lib.Workdir(str(root))
  table = neighbours_lib.NeighbourTable(np.arange(vocab, dtype=np.int32)[:, None],
                                        np.ones((vocab, 1), np.float32))
  system = run.denoiser_system(config, table)
  params = _some_params(system)
  ema = jax.tree.map(lambda x: x + 1, params)
  manager = checkpoints.manager(run.checkpoints_dir("denoiser"), async_save=False)
  manager.save(5, args=ocp.args.StandardSave({"params": params, "ema_params": ema}))
  manager.wait_until_finished()
  manager.close()
  run.save_run_config(config)
  return run, system, ema


def test_init_from_loads_the_ema_and_names_the_first_parameter_that_does_not_fit(tmp_path):
  config = configs.load("shapes_tiny:runlocal")
  config.denoiser.depth = 2
  source, system, ema = _denoiser_run(tmp_path / "source", config, vocab=16)
  target = checkpoints.on_device(jax.eval_shape(system.init_params, jax.random.key(1)))
  loaded, key, step = source.load_denoiser_init(target)
  assert (key, step) == ("ema_params", 5)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(a, b)
  # Straight into a 2x2x2 mesh's shardings, as the train loop lays the parameters out.
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
  boxed = jax.eval_shape(system.init_params, jax.random.key(1))
  shardings = sharding.logical_to_shardings(boxed, mesh, sharding.DEFAULT_RULES)
  on_mesh = jax.tree.map(lambda s, sub: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sub), shardings, boxed)
  loaded, _, _ = source.load_denoiser_init(on_mesh)
  assert any(len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated
             for leaf in jax.tree.leaves(loaded))
  for a, b, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(ema),
                        jax.tree.leaves(on_mesh)):
    assert a.sharding == want.sharding
    np.testing.assert_array_equal(a, b)

  def abstract(vocab, depth):
    other = config.copy_and_resolve_references()
    other.denoiser.depth = depth
    table = neighbours_lib.NeighbourTable(np.zeros((vocab, 1), np.int32),
                                          np.ones((vocab, 1), np.float32))
    return checkpoints.on_device(jax.eval_shape(
        workdir_lib.Workdir(str(tmp_path)).denoiser_system(other, table).init_params,
        jax.random.key(1)))

  # Another vocabulary: the first parameter whose shape differs, with both shapes.
  wider = abstract(32, config.denoiser.depth)
  (path, mine), = [(p, a.shape) for (p, a), b in zip(
      jax.tree_util.tree_leaves_with_path(nn.unbox(wider)),
      jax.tree.leaves(nn.unbox(target))) if a.shape != b.shape][:1]
  theirs = [b.shape for (p, b) in jax.tree_util.tree_leaves_with_path(nn.unbox(target))
            if p == path][0]
  name = "/".join(k.key for k in path)
  with pytest.raises(ValueError) as error:
    source.load_denoiser_init(wider)
  message = str(error.value)
  assert "\n" not in message
  assert f"{name} is {tuple(theirs)} there and {tuple(mine)} here" in message, message
  # A deeper model: its extra block is absent from the checkpoint.
  with pytest.raises(ValueError, match=r"denoiser/block_\d+/.* is absent there and \(.*\) here"):
    source.load_denoiser_init(abstract(16, config.denoiser.depth + 1))
  # A shallower one: the checkpoint's last block is absent here.
  with pytest.raises(ValueError, match=r"denoiser/block_\d+/.* is \(.*\) there and absent here"):
    source.load_denoiser_init(abstract(16, config.denoiser.depth - 1))


def test_init_from_must_name_a_trained_run(tmp_path):
  from mdd import validate  # pylint: disable=import-outside-toplevel
  config = configs.load("shapes_tiny:runlocal")
  config.denoiser.depth = 1
  source, _, _ = _denoiser_run(tmp_path / "source", config, vocab=16)
  assert "has no exported tokenizer" in source.source_problem()
  # The exported tokenizer: its files and a checkpoint.
  manager = checkpoints.manager(source.checkpoints_dir("tokenizer"), async_save=False)
  manager.save(1, args=ocp.args.StandardSave({"step": jnp.zeros((), jnp.int32)}))
  manager.wait_until_finished()
  manager.close()
  for path in (source.tokenizer_config_file, source.neighbours_file):
    with open(path, "w", encoding="utf-8") as f:
      f.write("{}")
  assert source.source_problem() is None
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  workdir_lib.Workdir(str(untrained)).save_run_config(config)
  cases = {str(tmp_path / "missing"): "is not a folder",
           str(tmp_path): "is not an mdd workdir",
           str(untrained): "has no denoiser checkpoint"}
  for folder, expected in cases.items():
    config.denoiser_train.init_from = folder
    problems = [p for p in validate.validate(config) if "init_from" in p]
    assert len(problems) == 1 and expected in problems[0], problems
    config.mode = "sample"  # Only the stages that read init_from check it.
    assert not [p for p in validate.validate(config) if "init_from" in p]
    config.mode = "pipeline"
  config.denoiser_train.init_from = source.root
  assert validate.validate(config) == []
  # The launcher validates before a multi-process job is joined, so the check must not start
  # JAX's backend (jax.distributed.initialize would then fail).
  probe = ("import configs, jax._src.xla_bridge as xb; from mdd import validate; "
           "c = configs.load('shapes_tiny'); c.denoiser_train.init_from = %r; "
           "print(validate.validate(c), bool(xb._backends))" % source.root)
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), check=True)
  assert result.stdout.split() == ["[]", "False"], result.stdout + result.stderr[-2000:]


def test_sampling_params_of_an_earlier_checkpoint_step(tmp_path):
  """`step=` reads that checkpoint's EMA (for score-vs-step curves); a step that was not kept
  is a one-line error listing the kept steps."""
  config = configs.load("shapes_tiny:runlocal")
  config.denoiser.depth = 1
  run, system, ema = _denoiser_run(tmp_path, config, vocab=16)
  later = jax.tree.map(lambda x: x * 2, ema)
  manager = checkpoints.manager(run.checkpoints_dir("denoiser"), async_save=False, keep=5)
  manager.save(9, args=ocp.args.StandardSave({"params": later, "ema_params": later}))
  manager.wait_until_finished()
  manager.close()
  latest, step = run.load_denoiser_params(system, config)
  assert step == 9
  earlier, step = run.load_denoiser_params(system, config, step=5)
  assert step == 5
  for a, b, c in zip(jax.tree.leaves(earlier), jax.tree.leaves(nn.unbox(ema)),
                     jax.tree.leaves(latest)):
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) or not np.asarray(a).any()
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .*\[5, 9\]"):
    run.load_denoiser_params(system, config, step=7)


def test_an_unreadable_checkpoint_keeps_orbax_s_unawaited_read_errors_off_stderr(tmp_path):
  """The first failing array read is reported on one line; asyncio's "Task exception was never
  retrieved" reports of orbax's other failed reads (tracebacks, logged when collected) are
  dropped, other asyncio reports are not."""
  def read(step):
    if step == 2:
      raise ValueError("DATA_LOSS: truncated")
    return "ok"

  assert checkpoints.first_readable(str(tmp_path), [2, 1], read, "toy") == ("ok", 1)
  logger = logging.getLogger("asyncio")
  messages = ("Task exception was never retrieved\nfuture: <Task finished coro=<async_deserialize"
              "() done, defined at /env/orbax/checkpoint/_src/serialization.py:392>>",
              "Task exception was never retrieved\nfuture: <Task finished coro=<mine() done, "
              "defined at /app/mine.py:1>>",
              "Unclosed client session")
  records = [logger.makeRecord("asyncio", logging.ERROR, __file__, 1, m, (), None)
             for m in messages]
  assert [bool(logger.filter(r)) for r in records] == [False, True, True]
