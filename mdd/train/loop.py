"""The one train loop, shared by the tokenizer and the denoiser.

A training part describes itself as a `Task` (how to build its state, one jittable step, its
data from a given step, its evaluation); this file owns everything else, in sections a reader
can scan: shardings, state (fresh or restored), step, checkpoints, metrics, loop, final eval.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from mdd.train import metrics as metrics_lib
from mdd.utils import checkpoints
from mdd.utils import sharding as sharding_lib
from mdd.utils import fileio


@dataclasses.dataclass
class Task:
  """What the loop needs from a training part (tokenizer or denoiser)."""
  name: str  # Workdir sub-folder: "tokenizer" or "denoiser".
  init_state: Callable[[jax.Array], Any]
  train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]]
  make_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
  num_steps: int
  evaluate: Callable[[Any], dict[str, float]] | None = None
  image_summaries: Callable[[Any, dict], dict[str, np.ndarray]] | None = None
  # Fresh sharded state -> the state a run without a checkpoint starts from (e.g. weights of
  # another run); never called when resuming. It must keep every leaf's sharding.
  warm_start: Callable[[Any], Any] | None = None


class Preempted(SystemExit):
  """Training stopped on SIGTERM after saving a checkpoint; exits with status 143 (128 + 15)."""

  def __init__(self, message: str, code: int = 143):
    super().__init__(code)
    self.message = message


class Paused(Preempted):
  """Training stopped at the loop's `stop_at` step after saving a checkpoint; exits with status
  0 and, like a preemption, ends the pipeline there (the same command resumes)."""

  def __init__(self, message: str):
    super().__init__(message, code=0)


@contextlib.contextmanager
def _sigterm_flag():
  """An Event set by SIGTERM while training (one process): the loop saves, then stops.

  With several processes jax's preemption service owns SIGTERM and the loop asks the
  checkpoint manager instead (`reached_preemption`: all processes agree on the step)."""
  flag = threading.Event()
  if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def abstract_state(task: Task, mesh: Mesh, rules) -> tuple[Any, Any]:
  """(abstract state with shardings, shardings) without allocating anything."""
  abstract = jax.eval_shape(task.init_state, jax.random.key(0))
  shardings = sharding_lib.logical_to_shardings(abstract, mesh, rules)
  return sharding_lib.with_shardings(abstract, shardings), shardings


# The items of a train checkpoint: the state, and the input pipeline's position.
CHECKPOINT_ITEMS = ("default", "data")


def restore_or_init(task: Task, manager, mesh: Mesh, rules, rng: jax.Array):
  """Restores the latest checkpoint onto this mesh, or creates a fresh sharded state (then
  `task.warm_start`, if any). Returns (state, shardings, step, data record or None): the record
  is the input pipeline's position saved with the state (`resume_batches` reads it)."""
  target, shardings = abstract_state(task, mesh, rules)
  steps = sorted(manager.all_steps(), reverse=True)
  if steps:
    directory = str(manager.directory)

    def read(step):
      items = {"default": ocp.args.StandardRestore(target)}
      if "data" in manager.item_metadata(step):
        items["data"] = ocp.args.JsonRestore()
      restored = manager.restore(step, args=ocp.args.Composite(**items))
      return restored["default"], restored.get("data")

    def on_corrupt(step):
      if jax.process_index() == 0:
        checkpoints.set_aside(directory, step)
      manager.reload()

    (state, data), latest = checkpoints.first_readable(directory, steps, read, task.name,
                                                       on_corrupt)
    logging.info("%s: resuming from checkpoint step %d", task.name, latest)
    return state, shardings, int(latest), data
  with sharding_lib.mesh_context(mesh, rules):
    state = jax.jit(task.init_state, out_shardings=shardings)(rng)
    if task.warm_start is not None:
      state = task.warm_start(state)
  return state, shardings, 0, None


# --------------------------------------------------------------------------------------------
# Input: the pipeline's position in the checkpoint, and batches prefetched onto the devices.

def resume_batches(task: Task, step: int, record: dict | None):
  """(the task's batches from `step`, the step their stream started at): the pipeline restored
  from the checkpoint's data record when there is one (the grain iterator state of the stream
  it started), else started at `step` (the same batches: batch k depends only on the seed, k
  and the data)."""
  if record and int(record.get("step", -1)) == step:
    batches = task.make_batches(int(record["start"]))
    if hasattr(batches, "set_state"):
      try:
        batches.set_state(record["iterator"])
        return batches, int(record["start"])
      except Exception as e:  # pylint: disable=broad-except  (a pipeline of another shape)
        logging.warning("%s: the checkpoint's input pipeline state does not fit this pipeline "
                        "(%s: %s); starting the input at step %d instead", task.name,
                        type(e).__name__, e, step)
    if hasattr(batches, "close"):
      batches.close()
  return task.make_batches(step), step


def device_batches(batches, mesh: Mesh, size: int = 2):
  """(global device batch, the host iterator's state just after it) for each host batch, with
  `size` batches transferred ahead of the one being used."""
  get_state = getattr(batches, "get_state", lambda: None)
  queue = collections.deque()

  def enqueue():
    host = next(batches, None)
    if host is not None:
      queue.append((sharding_lib.shard_batch(host, mesh), get_state()))

  for _ in range(max(size, 1)):
    enqueue()
  while queue:
    item = queue.popleft()
    enqueue()
    yield item


def jit_train_step(task: Task, state_shardings, step_rng: jax.Array):
  """`step(state, batch, step) -> (state, metrics)`, jitted once with the state's shardings;
  the old state's buffers are donated. Step `k` uses the key `fold_in(step_rng, k)`.

  The NaN guard lives in the step: when a metric (loss, gradient norm, ...) or a floating leaf
  of the new state is not finite, the step returns the old state unchanged and the metric
  `nonfinite` = 1, so a non-finite state never exists to be saved."""
  def step_fn(state, batch, step):
    new_state, metrics = task.train_step(state, batch, jax.random.fold_in(step_rng, step))
    checks = [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]
    checks += [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(new_state)
               if jnp.issubdtype(leaf.dtype, jnp.floating)]
    finite = jnp.all(jnp.stack(checks))
    # A conditional, not an elementwise select over every leaf: with the select, XLA's CPU
    # compile of the tokenizer step took 320 s instead of 10 s.
    new_state = jax.lax.cond(finite, lambda: new_state, lambda: state)
    return new_state, dict(metrics, nonfinite=(~finite).astype(jnp.float32))

  return jax.jit(step_fn, in_shardings=(state_shardings, None, None),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def _mean_scalars(fetched: list[dict]) -> tuple[dict[str, float], int]:
  """(means of the finite steps' metrics, number of non-finite steps) of fetched step metrics."""
  bad = int(sum(float(m["nonfinite"]) for m in fetched))
  good = [m for m in fetched if not float(m["nonfinite"])] or fetched
  keys = [k for k in fetched[0] if k != "nonfinite"]
  return {k: float(np.mean([m[k] for m in good])) for k in keys}, bad


NONFINITE_POLICIES = ("stop", "skip")


def train(task: Task, loop_cfg, workdir: str, mesh: Mesh, rules, seed: int = 0):
  """Trains `task` to `task.num_steps`, resuming from DIR/<name>/checkpoints if present.

  loop_cfg fields: log_every, ckpt_every, summary_every (0 = off), keep_checkpoints,
  eval_every (0 = only at the end), stop_at (0 = off: else this invocation ends after that
  step, with a checkpoint, and raises `Paused`; the schedules still run to `num_steps`).
  Returns the final state. SIGTERM (a scheduler's preemption, `timeout`) saves a checkpoint
  after the current step and raises `Preempted`.
  """
  out_dir = os.path.join(workdir, task.name)
  is_main = jax.process_index() == 0
  writer = metrics_lib.Writer(out_dir, is_main=is_main,
                              tensorboard=bool(loop_cfg.get("tensorboard", True)))
  manager = checkpoints.manager(os.path.join(out_dir, "checkpoints"),
                               keep=int(loop_cfg.get("keep_checkpoints", 2)),
                               async_save=bool(loop_cfg.get("async_checkpoints", True)),
                               item_names=CHECKPOINT_ITEMS)
  rng = jax.random.key(seed)
  init_rng, step_rng = jax.random.split(rng)

  # State: restored or fresh, laid out by the logical rules.
  state, state_shardings, start_step, data_record = restore_or_init(task, manager, mesh, rules,
                                                                    init_rng)

  jit_step = jit_train_step(task, state_shardings, step_rng)

  log_every = int(loop_cfg.get("log_every", 50))
  ckpt_every = int(loop_cfg.get("ckpt_every", 500))
  summary_every = int(loop_cfg.get("summary_every", 0))
  eval_every = int(loop_cfg.get("eval_every", 0))
  nonfinite_policy = str(loop_cfg.get("nonfinite", "stop"))
  if log_every < 1 or ckpt_every < 1:
    raise ValueError(f"{task.name}: log_every={log_every} and ckpt_every={ckpt_every} must be "
                     ">= 1")
  if nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f"{task.name}: nonfinite={nonfinite_policy!r}: must be one of "
                     f"{NONFINITE_POLICIES}")
  total = task.num_steps
  stop_at = int(loop_cfg.get("stop_at", 0) or 0)
  if stop_at < 0:
    raise ValueError(f"{task.name}: stop_at={stop_at} must be >= 0 (0 = off)")
  if 0 < stop_at < total and start_step >= stop_at:
    manager.close()
    writer.close()
    raise Paused(f"{task.name}: already at step {start_step} >= stop_at={stop_at}; nothing to "
                 "train in this invocation")

  if start_step >= total:
    logging.info("%s: already trained to step %d", task.name, start_step)
  else:
    logging.info("%s: training steps %d -> %d on mesh %s", task.name, start_step, total,
                 dict(mesh.shape))
  host_batches, stream_start = resume_batches(task, start_step, data_record)
  batches = device_batches(host_batches, mesh, int(loop_cfg.get("device_prefetch", 2)))
  pending: list[dict] = []
  t_last, steps_since = time.time(), 0
  multi_process = jax.process_count() > 1
  preempted, done, saved = False, start_step, start_step
  nonfinite_at, skipped = None, 0
  with sharding_lib.mesh_context(mesh, rules), _sigterm_flag() as sigterm:
    for step in range(start_step, total):
      batch, input_state = next(batches)
      state, step_metrics = jit_step(state, batch, np.int32(step))
      pending.append(step_metrics)
      steps_since += 1
      done = step + 1
      paused = done == stop_at and done < total
      preempted = (sigterm.is_set() or (multi_process and manager.reached_preemption(done))
                   or paused)
      save = done % ckpt_every == 0 or done == total or preempted
      if done % log_every == 0 or done == total or save:
        # Before a save too: a checkpoint is written only after its steps were seen finite.
        fetched = jax.device_get(pending)
        scalars, bad = _mean_scalars(fetched)
        if bad and nonfinite_policy == "stop":
          nonfinite_at = done
          break
        if done % log_every == 0 or done == total:
          skipped += bad
          elapsed = time.time() - t_last
          scalars["steps_per_sec"] = steps_since / max(elapsed, 1e-9)
          if nonfinite_policy == "skip":
            scalars["skipped_updates"] = float(skipped)
          writer.write_scalars(done, scalars)
          eta = (total - done) / max(scalars["steps_per_sec"], 1e-9)
          print(f"[{task.name}] step {done}/{total} " +
                " ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())) +
                f" eta={eta:.0f}s", flush=True)
          if bad:
            logging.warning("%s: skipped %d non-finite updates up to step %d", task.name, bad,
                            done)
          pending, t_last, steps_since = [], time.time(), 0
      if summary_every and task.image_summaries and done % summary_every == 0:
        writer.write_images(done, task.image_summaries(state, batch))
      if eval_every and task.evaluate and done % eval_every == 0 and done != total:
        writer.write_scalars(done, {f"eval/{k}": v for k, v in task.evaluate(state).items()
                                    if np.isscalar(v)})
      if save:
        items = {"default": ocp.args.StandardSave(state)}
        if input_state is not None:
          # Every process is at the same position; the primary one writes it.
          items["data"] = ocp.args.JsonSave({"step": done, "start": stream_start,
                                             "iterator": input_state})
        manager.save(done, args=ocp.args.Composite(**items), force=preempted)
        saved = done
      if preempted:
        break
  manager.wait_until_finished()
  batches.close()
  if hasattr(host_batches, "close"):
    host_batches.close()
  if nonfinite_at is not None:
    writer.close()
    manager.close()
    raise FloatingPointError(
        f"{task.name}: non-finite loss, gradients or weights at a step up to {nonfinite_at}; "
        f"stopped without saving it, the last checkpoint (step {saved}) holds finite weights "
        f"and the same command resumes from it; lower the learning rate, check the data, or "
        f"set the loop's nonfinite='skip' to skip such updates")

  # Final evaluation (not after a preemption), written atomically next to the checkpoints.
  eval_path = os.path.join(out_dir, "eval.json")
  if not preempted and task.evaluate is not None and (start_step < total
                                                      or not fileio.exists(eval_path)):
    with sharding_lib.mesh_context(mesh, rules):
      results = task.evaluate(state)
    results = {k: (float(v) if np.isscalar(v) or np.ndim(v) == 0 else v)
               for k, v in results.items()}
    results["step"] = int(max(start_step, total))
    if is_main:
      fileio.write_json_atomic(eval_path, results)
    writer.write_scalars(total, {f"eval/{k}": v for k, v in results.items()
                                 if isinstance(v, float)})
  writer.flush()
  writer.close()
  manager.close()
  if preempted:
    why = f"paused at stop_at={stop_at}" if done == stop_at else "stopped by SIGTERM"
    message = (f"{task.name}: {why} after step {done}; its checkpoint is saved, the same "
               "command resumes from it")
    print(f"mdd: {message}", file=sys.stderr, flush=True)
    raise (Paused if done == stop_at else Preempted)(message)
  return state
