"""The shared train loop: sharded state, checkpoint/resume, metrics, NaN guard, eval JSON."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdd.data import loader
from mdd.train import loop, metrics, state as state_lib
from mdd.utils import checkpoints
from mdd.utils import sharding


class _Regressor(nn.Module):
  hidden: int = 16

  @nn.compact
  def __call__(self, x):
    w1 = self.param("w1", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                       ("embed", "mlp")), (x.shape[-1], self.hidden))
    w2 = self.param("w2", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                       ("mlp", "embed")), (self.hidden, 1))
    return jnp.tanh(x @ w1) @ w2


def _task(num_steps, lr=3e-2, batch_size=16, poison_at=None, schedule_steps=None, hidden=16,
          poison_steps=()):
  model = _Regressor(hidden)
  opt_cfg = ml_collections.ConfigDict(dict(lr=lr, warmup_steps=2, num_steps=schedule_steps or num_steps,
                                           weight_decay=0.0, grad_clip=1.0))
  tx = state_lib.make_optimizer(opt_cfg)
  true_w = np.random.default_rng(123).normal(size=(8, 1)).astype(np.float32)

  def init_state(rng):
    params = model.init(rng, jnp.zeros((1, 8)))["params"]
    return state_lib.TrainState.create(params, tx, ema_decay=0.9)

  def train_step(state, batch, rng):
    del rng
    def loss_fn(params):
      pred = model.apply({"params": params}, batch["x"])
      return jnp.mean((pred - batch["y"]) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}

  def make_batches(start_step):
    step = start_step
    while True:
      rng = np.random.default_rng(step)  # Batch i depends only on i: resumable.
      x = rng.normal(size=(batch_size, 8)).astype(np.float32)
      y = np.tanh(x @ true_w).astype(np.float32)
      if (poison_at is not None and step >= poison_at) or step in poison_steps:
        x[:] = np.nan
      yield {"x": x, "y": y}
      step += 1

  def evaluate(state):
    batch = next(make_batches(10_000))
    pred = model.apply({"params": state.eval_params}, batch["x"])
    return {"mse": float(jnp.mean((pred - batch["y"]) ** 2))}

  return loop.Task(name="toy", init_state=init_state, train_step=train_step,
                   make_batches=make_batches, num_steps=num_steps, evaluate=evaluate)


def _loop_cfg(**kw):
  base = dict(log_every=5, ckpt_every=10, keep_checkpoints=3, async_checkpoints=False,
              tensorboard=False)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _mesh(shape=(2, 2, 2)):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=shape[0], fsdp=shape[1],
                                                           tensor=shape[2])))


def test_trains_shards_and_writes_eval(tmp_path):
  mesh = _mesh()
  state = loop.train(_task(30), _loop_cfg(), str(tmp_path), mesh, sharding.DEFAULT_RULES)
  assert int(state.step) == 30
  # Weights are laid out by their logical names: embed->fsdp, mlp->tensor.
  w1 = state.params["w1"].value
  assert w1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  records = metrics.read_jsonl(os.path.join(tmp_path, "toy", "metrics.jsonl"))
  losses = [r["loss"] for r in records if "loss" in r]
  assert losses[-1] < 0.5 * losses[0]
  with open(os.path.join(tmp_path, "toy", "eval.json")) as f:
    result = json.load(f)
  assert result["step"] == 30 and result["mse"] < losses[0]


def test_resume_continues_the_same_curve(tmp_path):
  mesh = _mesh()
  full = loop.train(_task(20), _loop_cfg(), str(tmp_path / "full"), mesh, sharding.DEFAULT_RULES)
  # Interrupted run: 10 steps, then a new process-like call continues to 20.
  # Same schedule (20 steps), stopped after 10 as if killed.
  loop.train(_task(10, schedule_steps=20), _loop_cfg(), str(tmp_path / "part"), mesh,
             sharding.DEFAULT_RULES)
  resumed = loop.train(_task(20), _loop_cfg(), str(tmp_path / "part"), mesh,
                       sharding.DEFAULT_RULES)
  np.testing.assert_allclose(np.asarray(resumed.params["w1"].value),
                             np.asarray(full.params["w1"].value), rtol=1e-5, atol=1e-6)


def test_stop_at_pauses_with_a_checkpoint_and_the_rerun_continues_the_same_curve(tmp_path):
  """`stop_at` ends an invocation at that step (checkpoint saved, no final eval, exit status 0)
  with the schedule of the whole run; reruns continue, bit-exact with an uninterrupted run."""
  mesh = _mesh()
  full = loop.train(_task(20), _loop_cfg(), str(tmp_path / "full"), mesh, sharding.DEFAULT_RULES)
  part = str(tmp_path / "part")
  with pytest.raises(loop.Paused) as paused:
    loop.train(_task(20), _loop_cfg(stop_at=7), part, mesh, sharding.DEFAULT_RULES)
  assert paused.value.code == 0 and "paused at stop_at=7 after step 7" in paused.value.message
  assert checkpoints.all_steps(os.path.join(part, "toy", "checkpoints"))[0] == 7
  assert not os.path.exists(os.path.join(part, "toy", "eval.json"))
  with pytest.raises(loop.Paused) as paused:  # Already there: no steps.
    loop.train(_task(20), _loop_cfg(stop_at=7), part, mesh, sharding.DEFAULT_RULES)
  assert "nothing to train" in paused.value.message
  resumed = loop.train(_task(20), _loop_cfg(stop_at=20), part, mesh, sharding.DEFAULT_RULES)
  assert int(resumed.step) == 20 and os.path.exists(os.path.join(part, "toy", "eval.json"))
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_onto_a_different_mesh(tmp_path):
  loop.train(_task(10), _loop_cfg(), str(tmp_path), _mesh((2, 2, 2)), sharding.DEFAULT_RULES)
  other = _mesh((1, 4, 2))
  task = _task(10)
  manager = checkpoints.manager(os.path.join(tmp_path, "toy", "checkpoints"),
                                item_names=loop.CHECKPOINT_ITEMS)
  state, _, step, _ = loop.restore_or_init(task, manager, other, sharding.DEFAULT_RULES,
                                        jax.random.key(0))
  assert step == 10
  assert state.params["w1"].value.sharding.mesh.shape == other.shape
  manager.close()


def test_checkpoint_of_another_config_is_a_clear_error(tmp_path):
  mesh = _mesh()
  loop.train(_task(10), _loop_cfg(), str(tmp_path), mesh, sharding.DEFAULT_RULES)
  ckpt_dir = os.path.join(tmp_path, "toy", "checkpoints")
  expected = (r"checkpoint at step 10 in .*checkpoints cannot be restored for this config "
              r"\(Requested shape: .* stored shape: .*\); a workdir written with another config")
  with pytest.raises(ValueError, match=expected):
    loop.train(_task(20, hidden=32), _loop_cfg(), str(tmp_path), mesh, sharding.DEFAULT_RULES)
  # The eval-time restore (params only) says the same.
  wide = _task(10, hidden=32)
  abstract = jax.eval_shape(wide.init_state, jax.random.key(0))
  with pytest.raises(ValueError, match=expected):
    checkpoints.restore_subtrees(ckpt_dir, {"params": checkpoints.on_device(abstract.params)})
  # Nothing was lost: the checkpoint is still there and the right config resumes from it.
  manager = checkpoints.manager(ckpt_dir)
  assert manager.latest_step() == 10
  manager.close()
  state = loop.train(_task(20), _loop_cfg(), str(tmp_path), mesh, sharding.DEFAULT_RULES)
  assert int(state.step) == 20


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(FloatingPointError, match="non-finite loss, gradients or weights"):
    loop.train(_task(30, poison_at=12), _loop_cfg(), str(tmp_path), _mesh(),
               sharding.DEFAULT_RULES)
  manager = checkpoints.manager(os.path.join(tmp_path, "toy", "checkpoints"))
  assert manager.latest_step() == 10
  manager.close()


def _saved_params(ckpt_dir):
  """{step: params} of every checkpoint in the folder, read back from disk."""
  manager = checkpoints.manager(ckpt_dir)
  out = {}
  for step in manager.all_steps():
    restored = manager.restore(step)
    out[step] = jax.tree.leaves(restored["params"])
  manager.close()
  return out


def test_nan_guard_saves_no_nonfinite_state_when_checkpoints_outpace_logs(tmp_path):
  """ckpt_every < log_every: the guard still sees every step before a save; every checkpoint on
  disk is finite, the message names the last good one, and the same command resumes."""
  cfg = _loop_cfg(log_every=5, ckpt_every=2, keep_checkpoints=10)
  with pytest.raises(FloatingPointError, match=r"up to 8;.*last checkpoint \(step 6\)"):
    loop.train(_task(30, poison_steps={7}), cfg, str(tmp_path), _mesh(), sharding.DEFAULT_RULES)
  ckpt_dir = os.path.join(tmp_path, "toy", "checkpoints")
  saved = _saved_params(ckpt_dir)
  assert sorted(saved) == [2, 4, 6]
  assert all(np.isfinite(np.asarray(leaf)).all() for leaves in saved.values() for leaf in leaves)
  # The data problem gone, the same command resumes from step 6 and finishes.
  state = loop.train(_task(30), cfg, str(tmp_path), _mesh(), sharding.DEFAULT_RULES)
  assert int(state.step) == 30


def test_nan_guard_skip_policy_drops_the_bad_updates_only(tmp_path):
  cfg = _loop_cfg(nonfinite="skip")
  state = loop.train(_task(20, poison_steps={7, 13}), cfg, str(tmp_path), _mesh(),
                     sharding.DEFAULT_RULES)
  assert int(state.step) == 18  # 20 steps, 2 updates skipped
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))
  rows = metrics.read_jsonl(os.path.join(tmp_path, "toy", "metrics.jsonl"))
  by_step = {r["step"]: r for r in rows if "loss" in r}
  assert by_step[10]["skipped_updates"] == 1 and by_step[20]["skipped_updates"] == 2
  assert all(np.isfinite(r["loss"]) for r in by_step.values())
  saved = _saved_params(os.path.join(tmp_path, "toy", "checkpoints"))
  assert all(np.isfinite(np.asarray(leaf)).all() for leaves in saved.values() for leaf in leaves)


def test_metrics_rows_survive_a_kill(tmp_path):
  """Rows are flushed as they are written: a reader sees them while the writer is still open,
  and a last line cut mid-write is skipped."""
  writer = metrics.JsonlWriter(str(tmp_path))
  writer.write_scalars(5, {"loss": 1.0})
  rows = metrics.read_jsonl(writer.path)
  assert rows[0]["step"] == 5 and rows[0]["loss"] == 1.0
  with open(writer.path, "a", encoding="utf-8") as f:
    f.write('{"step": 10, "lo')
  assert [r["step"] for r in metrics.read_jsonl(writer.path)] == [5]
  writer.close()


def _truncate_array_files(step_dir):
  """A copy cut short by a full disk: every array data file loses two thirds."""
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
           if os.sep + "d" + os.sep in os.path.join(root, name)]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 3)


def test_a_truncated_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
  mesh = _mesh()
  loop.train(_task(20, schedule_steps=30), _loop_cfg(), str(tmp_path), mesh,
             sharding.DEFAULT_RULES)
  ckpt_dir = os.path.join(tmp_path, "toy", "checkpoints")
  _truncate_array_files(os.path.join(ckpt_dir, "20"))
  # Inference-side reads fall back too.
  abstract = jax.eval_shape(_task(20).init_state, jax.random.key(0))
  restored, step = checkpoints.restore_subtrees(
      ckpt_dir, {"params": checkpoints.on_device(abstract.params)})
  assert step == 10
  # Training resumes from step 10, keeps the unreadable step aside, and writes step 20 again.
  state = loop.train(_task(30), _loop_cfg(), str(tmp_path), mesh, sharding.DEFAULT_RULES)
  assert int(state.step) == 30
  err = capsys.readouterr().err
  assert "the checkpoint at step 20" in err and "falling back to an older one" in err
  assert os.path.isdir(os.path.join(ckpt_dir, "corrupt-20"))
  assert checkpoints.all_steps(ckpt_dir)[0] == 30
  # The resumed run equals one that never saw the corruption.
  clean = loop.train(_task(30), _loop_cfg(), str(tmp_path / "clean"), mesh,
                     sharding.DEFAULT_RULES)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               nn.unbox(state.params), nn.unbox(clean.params))


class _PairSource:
  """Example i: a fixed random regression pair, so each batch is determined by its indices."""

  def __init__(self, n=40):
    rng = np.random.default_rng(5)
    self.x = rng.normal(size=(n, 8)).astype(np.float32)
    self.y = np.tanh(self.x @ rng.normal(size=(8, 1))).astype(np.float32)

  def __len__(self):
    return len(self.x)

  def __getitem__(self, i):
    return {"x": self.x[i], "y": self.y[i]}


def _grain_task(num_steps, calls, schedule_steps=None):
  """The toy task on the grain pipeline; `calls` records each pipeline's start and restores."""
  task = _task(num_steps, schedule_steps=schedule_steps)
  source = _PairSource()

  class Recorded(loader.MappedIterator):
    def set_state(self, state):
      calls.append(("set_state", state))
      super().set_state(state)

  def make_batches(start_step):
    calls.append(("start", start_step))
    return Recorded(loader.batch_iterator(source, batch_size=16, seed=2, start_step=start_step),
                    lambda batch: batch)

  task.make_batches = make_batches
  return task


def test_checkpoint_keeps_the_input_position_and_resume_restores_it(tmp_path):
  """The data item of each checkpoint is the grain iterator's state; a resume restores it into
  the stream the run started (not a new one at the step), and training continues bit-exactly."""
  mesh = _mesh()
  full = loop.train(_grain_task(20, []), _loop_cfg(), str(tmp_path / "full"), mesh,
                    sharding.DEFAULT_RULES)
  calls = []
  loop.train(_grain_task(10, calls, schedule_steps=20), _loop_cfg(), str(tmp_path / "part"),
             mesh, sharding.DEFAULT_RULES)
  ckpt_dir = os.path.join(tmp_path, "part", "toy", "checkpoints")
  with open(os.path.join(ckpt_dir, "10", "data", "metadata")) as f:
    record = json.load(f)
  assert record["step"] == 10 and record["start"] == 0
  assert record["iterator"] == {"next_index": 10}
  calls.clear()
  resumed = loop.train(_grain_task(20, calls), _loop_cfg(), str(tmp_path / "part"), mesh,
                       sharding.DEFAULT_RULES)
  assert calls[:2] == [("start", 0), ("set_state", {"next_index": 10})]
  for name in ("w1", "w2"):
    np.testing.assert_array_equal(np.asarray(resumed.params[name].value),
                                  np.asarray(full.params[name].value))
  # A state that does not fit the pipeline falls back to starting the input at the step.
  task = _grain_task(20, calls)
  batches, start = loop.resume_batches(task, 10, {"step": 10, "start": 0,
                                                  "iterator": {"bogus": 1}})
  assert start == 10
  np.testing.assert_array_equal(next(batches)["x"], next(task.make_batches(10))["x"])
