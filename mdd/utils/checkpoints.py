"""Orbax checkpoints: the manager the train loop saves with, and partial restores of parameters.

A train checkpoint is the whole train state (params, optimizer state, EMA, bookkeeping).
Inference needs only the parameters: `restore_subtrees` reads just the named subtrees (e.g.
`ema_params`) into the shapes and shardings it is given, never the optimizer state, so sampling
and evaluation do not depend on how a model was trained.

Directories may be local or URLs (`gs://...`): orbax reads and writes through `etils.epath` (its
arrays through tensorstore), and the helpers here through `mdd.utils.fileio`. On an object store
orbax marks a finished step with a `commit_success.txt` instead of renaming its folder.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from mdd.utils import fileio


def manager(directory: str, keep: int = 2, async_save: bool = True,
            item_names: tuple[str, ...] | None = None) -> ocp.CheckpointManager:
  """Orbax manager; a save becomes a step only when complete (a temporary folder renamed
  locally, a commit marker on an object store).

  `item_names`: the named items of each step (the train loop: `("default", "data")`, the state
  and the input pipeline's position); None for one unnamed item."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(fileio.absolute(directory), options=options,
                               item_names=item_names)


def all_steps(directory: str) -> list[int]:
  """Complete checkpoint steps under `directory`, newest first."""
  directory = fileio.absolute(directory)
  if not fileio.isdir(directory):
    return []
  with ocp.CheckpointManager(directory) as mgr:
    return sorted(mgr.all_steps(), reverse=True)


def is_mismatch(error: BaseException) -> bool:
  """Whether a restore failed because the arrays do not fit the requested ones (a checkpoint of
  another config), as opposed to an unreadable checkpoint (truncated or missing files)."""
  text = str(error)
  return (isinstance(error, ValueError) and "DATA_LOSS" not in text
          and ("shape" in text.lower() or "tree structure" in text.lower()))


class _UnretrievedReadErrors(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" reports of orbax's own tasks. A read
  of an unreadable checkpoint fails in several of orbax's array reads at once; the first error
  is raised (and reported on one line by `first_readable`), the others end in tasks nobody
  awaits, which asyncio logs with a traceback when they are collected, at a time that depends on
  the machine's load."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


_UNRETRIEVED_READ_ERRORS = _UnretrievedReadErrors()


def first_readable(directory: str, steps: list[int], read: Callable[[int], Any], name: str,
                   on_corrupt: Callable[[int], None] | None = None) -> tuple[Any, int]:
  """`(read(step), step)` for the newest of `steps` that reads; an unreadable one is reported on
  one line and skipped (`on_corrupt(step)` may move it aside); a checkpoint of another config
  raises `mismatch_error`."""
  for step in steps:
    try:
      return read(step), step
    except Exception as e:  # pylint: disable=broad-except  (orbax raises bare Exception)
      if is_mismatch(e):
        raise mismatch_error(name, directory, step, e) from None
      # addFilter keeps one copy of a filter however often it is added.
      logging.getLogger("asyncio").addFilter(_UNRETRIEVED_READ_ERRORS)
      reason = " ".join(str(e).split())[:160]
      message = (f"mdd: {name}: the checkpoint at step {step} in {directory} is unreadable "
                 f"({type(e).__name__}: {reason}); falling back to an older one")
      print(message, file=sys.stderr, flush=True)
      if on_corrupt is not None:
        on_corrupt(step)
  raise ValueError(f"{name}: no readable checkpoint in {directory} (steps {steps}); delete the "
                   "folder to start over or restore it from a copy")


def set_aside(directory: str, step: int) -> str:
  """Renames an unreadable step folder to `corrupt-<step>` (kept for inspection, ignored by the
  manager) so training can write that step again. On an object store the "rename" copies the
  folder's objects and deletes the originals."""
  directory = fileio.absolute(directory)
  src = os.path.join(directory, str(step))
  dst = os.path.join(directory, f"corrupt-{step}")
  suffix = 0
  while fileio.exists(dst):
    suffix += 1
    dst = os.path.join(directory, f"corrupt-{step}.{suffix}")
  fileio.move(src, dst)
  return dst


def mismatch_error(name: str, directory, step: int, error: ValueError) -> ValueError:
  """One line for a checkpoint whose arrays do not fit the config's model (a workdir reused with
  another config), instead of orbax's advice to pad or truncate."""
  reason = str(error).strip().split("\n")[0].split(". ")[0]
  return ValueError(f"{name}: the checkpoint at step {step} in {directory} cannot be restored "
                    f"for this config ({reason}); a workdir written with another config needs "
                    "that config or a fresh --workdir")


def on_device(abstract_tree, sharding=None):
  """`ShapeDtypeStruct`s of `abstract_tree` placed by `sharding` (default: the first local
  device)."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      abstract_tree)


def restore_subtrees(directory: str, targets: dict[str, Any], *, name: str = "model",
                     path: tuple[str, ...] = (),
                     step: int | None = None) -> tuple[dict[str, Any], int]:
  """Reads only `targets` (key -> abstract tree with shardings) from the latest checkpoint, or
  from checkpoint `step` when given (a missing step is a one-line FileNotFoundError).

  The keys are found under `path` in the saved state (e.g. `("generator",)`). Returns
  ({key: restored tree}, step). Raises FileNotFoundError without a checkpoint and a one-line
  ValueError when the arrays do not fit.
  """
  directory = fileio.absolute(directory)
  steps = all_steps(directory)
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  if step is not None:
    if int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint of step {step} under {directory} "
                              f"(steps {sorted(steps)})")
    steps = [int(step)]
  target = dict(targets)
  for key in reversed(path):
    target = {key: target}

  def read(step):
    item_dir = os.path.join(directory, str(step), "default")
    with ocp.PyTreeCheckpointer() as checkpointer:
      return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))

  restored, step = first_readable(directory, steps, read, name)
  for key in path:
    restored = restored[key]
  return {key: restored[key] for key in targets}, int(step)
