"""The run folder (`--workdir`): the one module that knows its layout and loads its trained parts.

  DIR/config.json                     the run's config (written by the launcher)
  DIR/.lock                           host and pid of the run holding the folder
  DIR/plan.json                       the memory plan of --config.mode=plan
  DIR/tokenizer/checkpoints/          orbax checkpoints of the tokenizer's train state
  DIR/tokenizer/tokenizer_config.json the config the tokenizer was trained with
  DIR/tokenizer/neighbours.npz        the GCE neighbour table [V, K] + weights
  DIR/tokenizer/eval.json             its final evaluation (PSNR, SSIM, codebook usage)
  DIR/tokenizer/copied_from.json      source run and step, when the tokenizer is another run's
  DIR/tokens/<split>/                 token shards (pretokenize)
  DIR/denoiser/checkpoints/           orbax checkpoints of the denoiser's train state
  DIR/denoiser/eval.json              its final evaluation (loss, masked accuracy, ...)
  DIR/<stage>/metrics.jsonl           training metrics (and TensorBoard event files)
  DIR/samples/                        grid.png, trajectory.gif, per-prompt PNGs
  DIR/eval/                           shapes_geneval.json, fid.json, layouts

Trained parts load from the model's abstract shapes (`jax.eval_shape` of its init) and read only
the parameters (EMA when the run kept one) out of a checkpoint, never an optimizer or train state.

DIR may be a local folder or a URL (`gs://bucket/run`): paths are strings joined with
`os.path.join`, and every file is read and written through `mdd.utils.fileio` (etils.epath).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mdd.data import loader
from mdd.models import system as system_lib
from mdd.models import tokenizer as tokenizer_lib
from mdd.objectives import neighbours as neighbours_lib
from mdd.utils import checkpoints
from mdd.utils import fileio
from mdd.utils import sharding as sharding_lib

TOKENIZER = "tokenizer"
DENOISER = "denoiser"
RUN_CONFIG = "config.json"
PLAN = "plan.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
NEIGHBOURS = "neighbours.npz"
COPIED_FROM = "copied_from.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"


class Workdir:
  """Paths of a run folder and loaders of what its stages trained."""

  def __init__(self, root: str):
    self.root = fileio.absolute(root)

  def __repr__(self) -> str:
    return f"Workdir({self.root!r})"

  # Paths.
  def stage_dir(self, stage: str) -> str:
    """DIR/<stage>: checkpoints, metrics and final eval of a training stage."""
    return os.path.join(self.root, stage)

  def checkpoints_dir(self, stage: str) -> str:
    return os.path.join(self.stage_dir(stage), CHECKPOINTS)

  @property
  def run_config_file(self) -> str:
    return os.path.join(self.root, RUN_CONFIG)

  @property
  def plan_file(self) -> str:
    return os.path.join(self.root, PLAN)

  @property
  def tokenizer_dir(self) -> str:
    return self.stage_dir(TOKENIZER)

  @property
  def tokenizer_config_file(self) -> str:
    return os.path.join(self.tokenizer_dir, TOKENIZER_CONFIG)

  @property
  def neighbours_file(self) -> str:
    return os.path.join(self.tokenizer_dir, NEIGHBOURS)

  @property
  def copied_from_file(self) -> str:
    return os.path.join(self.tokenizer_dir, COPIED_FROM)

  @property
  def denoiser_dir(self) -> str:
    return self.stage_dir(DENOISER)

  def checkpoint_steps(self, stage: str) -> list[int]:
    """Complete checkpoint steps of `stage`, newest first (empty when it has none)."""
    return checkpoints.all_steps(self.checkpoints_dir(stage))

  def tokens_dir(self, split: str | None = None) -> str:
    tokens = os.path.join(self.root, "tokens")
    return os.path.join(tokens, split) if split else tokens

  def samples_dir(self, name: str = "samples") -> str:
    return os.path.join(self.root, name)

  @property
  def eval_dir(self) -> str:
    return os.path.join(self.root, "eval")

  def eval_file(self, name: str) -> str:
    return os.path.join(self.eval_dir, name)

  # One run at a time.
  @property
  def lock_file(self) -> str:
    return os.path.join(self.root, LOCK)

  @contextlib.contextmanager
  def lock(self):
    """Holds DIR/.lock (host, pid, start time) while a run uses the folder.

    A lock of a process that no longer runs on this host is stale and taken over; a live one,
    or one of another host (whose process cannot be checked from here), is a one-line error
    naming the holder. On an object store taking the lock is best effort (see
    `fileio.create_exclusive`)."""
    fileio.makedirs(self.root)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    for _ in range(2):
      if fileio.create_exclusive(self.lock_file, json.dumps(mine)):
        break
      holder = self._read_lock()
      if holder is not None and not _is_stale(holder):
        raise ValueError(
            f"{self.root} is in use by pid {holder.get('pid')} on {holder.get('host')} "
            f"({self.lock_file}); wait for that run, or delete the lock file if it is gone")
      fileio.remove(self.lock_file)  # Stale (or unreadable): take it over.
    else:
      raise ValueError(f"cannot take the lock {self.lock_file}")
    try:
      yield
    finally:
      if (self._read_lock() or {}).get("pid") == mine["pid"]:
        fileio.remove(self.lock_file)

  def _read_lock(self) -> dict | None:
    return fileio.read_json_record(self.lock_file)

  # The run's config.
  def save_run_config(self, config):
    """DIR/config.json, so CLIs given only the workdir rebuild the same model (process 0)."""
    if jax.process_index() == 0:
      fileio.write_json_atomic(self.run_config_file, json.loads(config.to_json_best_effort()))

  def load_run_config(self) -> ml_collections.ConfigDict:
    return _read_config(self.run_config_file, "not an mdd workdir (run mdd.main on it first)")

  # Trained parts.
  def load_tokenizer_config(self) -> ml_collections.ConfigDict:
    """The full experiment config the tokenizer was trained with."""
    return _read_config(self.tokenizer_config_file,
                        "no trained tokenizer here (run --config.mode=train_tokenizer first)")

  def load_tokenizer(self) -> "TrainedTokenizer":
    """The trained tokenizer (EMA parameters when the run kept them), on one device."""
    config = self.load_tokenizer_config()
    model = tokenizer_lib.tokenizer_from_config(config.tokenizer)
    height, width = image_hw(config.data)
    abstract = jax.eval_shape(
        lambda rng: model.init(rng, jnp.zeros((1, height, width, 3), jnp.uint8))["params"],
        jax.random.key(0))
    key = "ema_params" if float(config.tokenizer.get("ema_decay", 0.0)) > 0 else "params"
    try:
      restored, step = checkpoints.restore_subtrees(
          self.checkpoints_dir(TOKENIZER), {key: checkpoints.on_device(abstract)},
          name=TOKENIZER, path=("generator",))
    except FileNotFoundError as e:
      raise FileNotFoundError(f"no tokenizer checkpoint: {e}") from None
    params = nn.unbox(restored[key])
    _check_finite(params, f"the tokenizer checkpoint (step {step}) in {self.tokenizer_dir}")
    return TrainedTokenizer(model=model, params=params, step=step)

  def load_neighbours(self) -> neighbours_lib.NeighbourTable:
    if not fileio.exists(self.neighbours_file):
      raise FileNotFoundError(f"{self.neighbours_file} not found (the tokenizer stage writes it: "
                              "run --config.mode=train_tokenizer)")
    return neighbours_lib.load_table(self.neighbours_file)

  def denoiser_system(self, config, table=None) -> system_lib.DenoiserSystem:
    """The denoiser system of `config`, with this run's vocabulary and neighbour table."""
    table = table or self.load_neighbours()
    return system_lib.system_from_config(config, vocab_size=table.vocab_size,
                                         neighbours=table.neighbours,
                                         neighbour_weights=table.weights)

  def load_denoiser_params(self, system: system_lib.DenoiserSystem, config,
                           sharding=None, step: int | None = None, *,
                           mesh: jax.sharding.Mesh | None = None) -> tuple[Any, int]:
    """(unboxed parameters, step) of the latest denoiser checkpoint (or of `step`): only the EMA
    copy when the run kept one, else the raw parameters. Placed on `mesh` in the shardings the
    train loop gives them there (the logical rules of `config`), each device reading only its
    shards; else every array by `sharding` (default: one device)."""
    abstract = jax.eval_shape(system.init_params, jax.random.key(0))
    if mesh is not None:
      rules = sharding_lib.rules_from_config(config)
      target = sharding_lib.abstract_on_mesh(abstract, mesh, rules)
    else:
      target = checkpoints.on_device(abstract, sharding)
    key = _eval_params_key(config)
    try:
      restored, step = checkpoints.restore_subtrees(
          self.checkpoints_dir(DENOISER), {key: target}, name=DENOISER, step=step)
    except FileNotFoundError as e:
      if step is not None:
        raise
      raise FileNotFoundError(f"no denoiser checkpoint under {self.checkpoints_dir(DENOISER)} "
                              "(run --config.mode=train first)") from e
    params = nn.unbox(restored[key])
    _check_finite(params, f"the denoiser checkpoint (step {step}) in {self.denoiser_dir}")
    return params, step

  # This run as the start of another (`denoiser_train.init_from` of that run).
  def source_problem(self) -> str | None:
    """Why this folder cannot start another run, in one line; None when it can (an mdd workdir
    with an exported tokenizer and a denoiser checkpoint). Reads only the file system."""
    if not fileio.isdir(self.root):
      return f"{self.root} is not a folder"
    if not fileio.exists(self.run_config_file):
      return f"{self.root} is not an mdd workdir (it has no {RUN_CONFIG})"
    # Step folders are listed, not asked of orbax: its manager starts JAX's backend, and the
    # launcher validates before a multi-process job is joined.
    if not _step_folders(self.checkpoints_dir(DENOISER)):
      return (f"{self.root} has no denoiser checkpoint under {self.checkpoints_dir(DENOISER)} "
              "(train that run first: --config.mode=train)")
    if (not _step_folders(self.checkpoints_dir(TOKENIZER))
        or not fileio.exists(self.tokenizer_config_file)
        or not fileio.exists(self.neighbours_file)):
      return (f"{self.root} has no exported tokenizer (checkpoint, {TOKENIZER_CONFIG} and "
              f"{NEIGHBOURS} under {self.tokenizer_dir})")
    return None

  def load_denoiser_init(self, target) -> tuple[Any, str, int]:
    """This run's latest denoiser parameters, to start another run from: the EMA copy when the
    checkpoint holds one, else the raw parameters.

    `target` is the other run's parameter tree (boxed or not) of arrays or `ShapeDtypeStruct`s;
    the parameters are read straight into its shapes and shardings. Returns (parameters in the
    structure of `target`, the subtree read, step). A parameter that is missing on either side
    or has another shape is a one-line ValueError naming its path and both shapes.
    """
    directory = self.checkpoints_dir(DENOISER)
    steps = self.checkpoint_steps(DENOISER)
    if not steps:
      raise FileNotFoundError(f"no denoiser checkpoint under {directory}")
    saved = _saved_shapes(directory, steps[0])
    if saved is None:  # Unreadable metadata: the restore below reports (or skips) the step.
      key = _eval_params_key(self.load_run_config())
    else:
      key = "ema_params" if any(path[0] == "ema_params" for path in saved) else "params"
      _check_same_shapes(saved, key, target, f"{self.root} (step {steps[0]})")
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    restored, step = checkpoints.restore_subtrees(directory, {key: abstract}, name=DENOISER)
    _check_finite(nn.unbox(restored[key]),
                  f"the denoiser checkpoint (step {step}) in {self.denoiser_dir}")
    return restored[key], key, step

  def tokenizer_copied_from(self) -> dict | None:
    """{"source", "step"} when this run's tokenizer is a copy of another run's, else None."""
    return fileio.read_json_record(self.copied_from_file)

  def copy_tokenizer_from(self, source: "Workdir") -> dict:
    """Makes `source`'s trained tokenizer this run's: its newest checkpoint, config, neighbour
    table and evaluation, recorded in DIR/tokenizer/copied_from.json. The record is written
    first and each piece lands by a rename, so a rerun after a kill completes the copy of the
    same step (on an object store the rename is a second copy). Returns the record. Call it on
    one process."""
    record = self.tokenizer_copied_from()
    if record is None:
      steps = source.checkpoint_steps(TOKENIZER)
      if not steps:
        raise FileNotFoundError(f"{source.root} has no tokenizer checkpoint to copy")
      record = {"source": source.root, "step": int(steps[0])}
      fileio.write_json_atomic(self.copied_from_file, record)
    source, step = Workdir(record["source"]), str(record["step"])
    pieces = [(os.path.join(source.checkpoints_dir(TOKENIZER), step),
               os.path.join(self.checkpoints_dir(TOKENIZER), step), True),
              (source.tokenizer_config_file, self.tokenizer_config_file, True),
              (source.neighbours_file, self.neighbours_file, True),
              (os.path.join(source.tokenizer_dir, "eval.json"),
               os.path.join(self.tokenizer_dir, "eval.json"), False)]
    for src, dst, required in pieces:
      if fileio.exists(dst) or (not required and not fileio.exists(src)):
        continue
      if not fileio.exists(src):
        raise FileNotFoundError(f"{src} not found: the tokenizer of {source.root} cannot be "
                                f"copied (recorded in {self.copied_from_file})")
      fileio.makedirs(os.path.dirname(dst))
      tmp = os.path.join(self.tokenizer_dir, f".copy-tmp-{os.path.basename(dst)}")
      if fileio.isdir(tmp):
        fileio.rmtree(tmp)
      fileio.copy(src, tmp)
      fileio.move(tmp, dst)
    return record


def _eval_params_key(config) -> str:
  """The train state's subtree that sampling and evaluation read: the EMA copy when the run
  kept one."""
  return "ema_params" if float(config.denoiser_train.get("ema_decay", 0.0)) > 0 else "params"


def _check_finite(params, what: str):
  """Refuses weights with NaN or Inf: they would sample blank or garbage images silently. One
  jitted reduction over every floating array (on a mesh too, where each device checks its
  shards)."""
  named = [(jax.tree_util.keystr(path), leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(params)
           if jnp.issubdtype(leaf.dtype, jnp.floating)]
  if not named:
    return
  first = getattr(named[0][1], "sharding", None)
  replicated = (jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec())
                if isinstance(first, jax.sharding.NamedSharding) else None)
  finite = jax.jit(lambda leaves: jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]),
                   out_shardings=replicated)([leaf for _, leaf in named])
  bad = [name for (name, _), ok in zip(named, np.asarray(finite)) if not ok]
  if bad:
    raise ValueError(f"{what} has non-finite weights ({len(bad)} arrays, e.g. {bad[0]}); train "
                     "again from an earlier checkpoint or a fresh --workdir")


def _step_folders(directory: str) -> list[str]:
  """The complete step folders of a checkpoint directory (orbax renames a step's folder to its
  number only once the step is written)."""
  return [name for name in fileio.listdir(directory)
          if name.isdigit() and fileio.isdir(os.path.join(directory, name))]


def _saved_shapes(directory: str, step: int) -> dict[tuple[str, ...], tuple] | None:
  """{path: shape} of every array in a train checkpoint (from its metadata, reading no array);
  None when the metadata cannot be read."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(epath.Path(directory) / str(step) / "default")
  except Exception:  # pylint: disable=broad-except  (orbax raises bare Exception)
    return None
  finally:
    handler.close()
  tree = getattr(metadata, "tree", metadata)
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {_path_names(path): tuple(leaf.shape) for path, leaf in leaves}


def _path_names(path) -> tuple[str, ...]:
  """A pytree key path as names; a box's value (`nn.LogicallyPartitioned.value`) is "value" in
  the tree and in the checkpoint alike."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _check_same_shapes(saved: dict, key: str, target, where: str):
  """Raises a one-line ValueError at the first parameter of `target` missing from the saved
  subtree `key` or of another shape there (then at the first saved one `target` lacks)."""
  wanted = {(key, *_path_names(path)): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(target)}
  extra = [path for path in saved if path[0] == key and path not in wanted]
  for path in [*wanted, *extra]:
    there, here = saved.get(path, "absent"), wanted.get(path, "absent")
    if there != here:
      name = "/".join(p for p in path[1:] if p != "value")
      raise ValueError(f"denoiser_train.init_from: the denoiser of {where} does not fit this "
                       f"run's model: {name} is {there} there and {here} here (init_from needs "
                       "the same denoiser variant, vocabulary and text encoder)")


def _is_stale(holder: dict) -> bool:
  """Whether the lock's process is gone (checkable on this host only)."""
  if holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder.get("pid", -1)), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, ValueError, OverflowError):
    return False
  except OSError as e:
    return e.errno == errno.ESRCH
  return False


def _read_config(path: str, hint: str) -> ml_collections.ConfigDict:
  if not fileio.exists(path):
    raise FileNotFoundError(f"{path} not found: {hint}")
  return ml_collections.ConfigDict(
      fileio.read_json(path, fix="restore it or use a fresh --workdir"))


def image_hw(data_cfg) -> tuple[int, int]:
  """(height, width) of the run's images from its `data` section."""
  res = loader.image_resolution(data_cfg)
  return (res, res) if isinstance(res, int) else (int(res[0]), int(res[1]))


def token_grid(config) -> tuple[int, int]:
  """(h, w) of the token grid the run's images encode to, from its `data` and `tokenizer`
  sections (before a tokenizer is trained)."""
  height, width = image_hw(config.data)
  f = int(config.tokenizer.model.downsample_factor)
  return height // f, width // f


def to_uint8(images) -> np.ndarray:
  """float images in [-1, 1] -> uint8 [0, 255]."""
  images = np.asarray(jax.device_get(images), np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass(eq=False)
class TrainedTokenizer:
  """A tokenizer module with its parameters, as jitted host-facing functions.

  encode(uint8 images [B, H, W, 3]) -> int32 ids [B, h, w] (numpy)
  decode(ids) -> uint8 images; decode_float(ids) -> float images in [-1, 1] (device)
  """
  model: tokenizer_lib.Tokenizer
  params: Any
  step: int = 0
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_codes(self) -> int:
    return int(self.model.num_codes)

  @property
  def downsample_factor(self) -> int:
    return int(self.model.downsample_factor)

  def _method(self, name: str):
    if name not in self._jitted:
      model = self.model
      self._jitted[name] = jax.jit(lambda p, x: model.apply({"params": p}, x, method=name))
    return self._jitted[name]

  def encode(self, images) -> np.ndarray:
    return np.asarray(self._method("encode")(self.params, jnp.asarray(images)))

  def decode_float(self, tokens) -> jax.Array:
    return self._method("decode")(self.params, jnp.asarray(tokens))

  def decode(self, tokens) -> np.ndarray:
    return to_uint8(self.decode_float(tokens))
