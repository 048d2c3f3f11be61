"""Orbax checkpoints: the manager the train loop saves with, and partial restores of parameters.

A train checkpoint is the whole train state (params, optimizer state, EMA, bookkeeping).
Inference needs only the parameters: `restore_subtrees` reads just the named subtrees (e.g.
`ema_params`) into the shapes and shardings it is given, never the optimizer state, so sampling
and evaluation do not depend on how a model was trained.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str, keep: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
  """Orbax manager; saves go to a temporary folder that is renamed when complete (atomic)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def latest_step(directory: str) -> int | None:
  """The latest complete checkpoint step under `directory` (None if there is none)."""
  directory = os.path.abspath(directory)
  if not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(directory) as mgr:
    return mgr.latest_step()


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
                     path: tuple[str, ...] = ()) -> tuple[dict[str, Any], int]:
  """Reads only `targets` (key -> abstract tree with shardings) from the latest checkpoint.

  The keys are found under `path` in the saved state (e.g. `("generator",)`). Returns
  ({key: restored tree}, step). Raises FileNotFoundError without a checkpoint and a one-line
  ValueError when the arrays do not fit.
  """
  directory = os.path.abspath(directory)
  step = latest_step(directory)
  item_dir = os.path.join(directory, str(step), "default")
  if step is None or not os.path.isdir(item_dir):
    raise FileNotFoundError(f"no checkpoint under {directory}")
  target = dict(targets)
  for key in reversed(path):
    target = {key: target}
  with ocp.PyTreeCheckpointer() as checkpointer:
    try:
      restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    except ValueError as e:
      raise mismatch_error(name, directory, step, e) from None
  for key in path:
    restored = restored[key]
  return {key: restored[key] for key in targets}, int(step)
