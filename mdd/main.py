r"""Entry point: `python -m mdd.main --config=configs/NAME.py[:arg] --workdir=DIR [--config.a.b=v]`.

Validates the config (one line per problem, before anything compiles), optionally joins a
multi-process job, then dispatches on `config.mode`. `--workdir` may be a local folder or a URL
(`gs://bucket/run`, see `mdd.utils.fileio`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import threading

from absl import app
from absl import flags
from ml_collections import config_flags

from mdd import validate as config_validation
from mdd.stages import resolve_mode
from mdd.utils import fileio, oom

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize() (default: config.distributed or "
    "the environment variable MDD_DISTRIBUTED=1).")

def _maybe_initialize_distributed(config):
  wanted = _DISTRIBUTED.value
  if wanted is None:
    wanted = bool(config.get("distributed", False)) or os.environ.get("MDD_DISTRIBUTED") == "1"
  if wanted:
    initialize_distributed()


def initialize_distributed():
  """Joins the multi-process job.

  On TPU pods and under SLURM JAX finds the coordinator itself. `launch/local.sh` sets
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID explicitly, and
  MDD_CPU_COLLECTIVES=gloo for cross-process collectives between CPU processes.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if os.environ.get("MDD_CPU_COLLECTIVES"):
    jax.config.update("jax_cpu_collectives_implementation", os.environ["MDD_CPU_COLLECTIVES"])
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                  process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d", jax.process_index(), jax.process_count())


def _hide_accelerators_from_tensorflow():
  """TF (TFDS input only) must not grab GPU/TPU memory that JAX needs."""
  if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is not None:
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      tf.config.experimental.set_visible_devices([], "GPU")
      tf.config.experimental.set_visible_devices([], "TPU")
    except (ImportError, RuntimeError, ValueError):
      pass


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of orbax and JAX internals (every checkpoint logs ~20 lines)."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = ("/orbax/" in record.pathname or "/jax/_src/" in record.pathname)
    return record.levelno >= logging.WARNING or not noisy


def enable_compilation_cache(config, workdir: str) -> str:
  """Turns on JAX's persistent compilation cache at `config.compilation_cache_dir` (relative:
  under the workdir; "" = off), so a resumed run loads its programs instead of re-compiling
  them (JAX reads and writes it through etils.epath, so a `gs://` workdir holds it too). Returns
  the directory ("" when off)."""
  cache = config.get("compilation_cache_dir", "")
  if not cache:
    return ""
  import jax  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, os.path.expanduser(cache))
  fileio.makedirs(path)
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def _config_or_error(config):
  """The loaded config; a file that failed to load (missing, a syntax error, a `get_config`
  that raised) becomes one line."""
  if type(config).__name__ != "_ErrorConfig":
    return config
  error = object.__getattribute__(config, "_error")
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  reason = lines[-1] if lines else type(error).__name__
  raise ValueError(f"--config={_config_arg()} could not be loaded: {reason}")


def _config_arg(argv=None) -> str:
  for arg in (argv or sys.argv)[1:]:
    if arg.startswith("--config="):
      return arg[len("--config="):]
  return "?"


def _usable_workdir(path: str) -> str:
  """The absolute workdir (a URL as given), created if needed; a file or a local folder this
  process cannot write is one line (on an object store a missing permission shows at the first
  write)."""
  workdir = fileio.absolute(path)
  if fileio.exists(workdir) and not fileio.isdir(workdir):
    raise ValueError(f"--workdir={path} is a file, not a folder")
  try:
    fileio.makedirs(workdir)
  except OSError as e:
    raise ValueError(f"--workdir={path} cannot be created: {e.strerror or e}") from None
  if not fileio.is_remote(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={path} is not writable by this user")
  return workdir


def data_cache_dir(workdir: str, cache_dir: str) -> str:
  """Where the data cache lives: `cache_dir` when absolute, else under the workdir, or, for a
  remote workdir, under the local mirror of it (`fileio.local_mirror`), since the loader
  memory-maps its cache files."""
  cache_dir = os.path.expanduser(cache_dir)
  root = fileio.local_mirror(workdir) if fileio.is_remote(workdir) else workdir
  return os.path.join(root, cache_dir)


def main(argv):
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/shapes_tiny.py")
  config = _config_or_error(config)
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  problems = config_validation.validate(config)
  if problems:
    for problem in problems:
      print(f"config error: {problem}", file=sys.stderr)
    sys.exit(2)
  run_fn = resolve_mode(config.mode)
  _maybe_initialize_distributed(config)
  if config.get("data", {}).get("source") == "tfds":
    _hide_accelerators_from_tensorflow()
  import jax  # pylint: disable=import-outside-toplevel
  from mdd import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  problems = config_validation.check_mesh_fits(config, jax.device_count())
  if problems:
    raise ValueError(problems[0])
  workdir = _usable_workdir(_WORKDIR.value)
  run_dir = workdir_lib.Workdir(workdir)
  lock = run_dir.lock() if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    enable_compilation_cache(config, workdir)
    data = config.get("data")
    if data is not None and data.get("cache_dir"):  # A relative cache lives in the workdir.
      data.cache_dir = data_cache_dir(workdir, data.cache_dir)
    # The modes that define the model record its config, so sample/eval CLIs given only the
    # workdir rebuild the same model. A fresh workdir records it at once; an existing one only
    # once the run is accepted (a config whose checkpoints do not fit fails first).
    records_config = config.mode in ("pipeline", "train_tokenizer", "pretokenize", "train")
    if records_config and not fileio.exists(run_dir.run_config_file):
      run_dir.save_run_config(config)
    try:
      run_fn(config, workdir)
    finally:
      stopped = sys.exc_info()[0]
      if records_config and (stopped is None or issubclass(stopped, loop_preempted())):
        run_dir.save_run_config(config)


def loop_preempted():
  """The train loop's SIGTERM exit (a run that was accepted and stopped cleanly)."""
  from mdd.train import loop  # pylint: disable=import-outside-toplevel
  return loop.Preempted


def _parse_flags(argv):
  """absl flag parsing; a bad flag, a `--config.x` override of a field the config lacks, or a
  config file that fails to load (missing, a syntax error, a `get_config` that raises) is one
  line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  (whatever the config file raised)
    inner = e
    while inner.__cause__ is not None or inner.__context__ is not None:
      inner = inner.__cause__ or inner.__context__
    lines = [line.strip() for line in str(inner).strip().splitlines() if line.strip()]
    reason = f"{type(inner).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    unknown = "Unknown command line flag 'config."
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    missing = str(inner).strip("'\" ")
    if str(e).startswith(unknown):
      field = str(e)[len(unknown):].split("'")[0]
      message = f"the config has no field {field!r} (--config.{field})"
    elif isinstance(inner, (AttributeError, KeyError)) and overrides:
      named = [a for a in overrides if missing in a[len("--config."):].split(".")]
      message = f"the config has no field {missing!r} ({named[0] if named else 'an override'})"
    elif isinstance(e, flags.Error) and inner is e:
      message = " ".join(str(e).split())
    else:
      message = f"--config={_config_arg(argv)} could not be loaded: {reason}"
    print(f"mdd: error: {message}", file=sys.stderr)
    sys.exit(2)


def run():
  """Console entry: user errors (bad config or flag, missing or corrupt files, permissions,
  shapes, a non-finite stop, a sampler batch too large for the accelerator) print one line and
  exit 2.

  Set MDD_TRACEBACK=1 to see the full traceback instead.
  """
  if os.environ.get("MDD_TRACEBACK") == "1":
    app.run(main, flags_parser=_parse_flags)
    return
  _silence_closed_event_loop_noise()
  try:
    app.run(main, flags_parser=_parse_flags)
  except (ValueError, OSError, FloatingPointError, MemoryError) as e:
    if isinstance(e, MemoryError) and not isinstance(e, oom.AcceleratorOutOfMemoryError):
      raise  # the host's memory ran out: a crash, with its traceback
    print(f"mdd: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without the interpreter's shutdown: after a failed restore orbax's background event
    # loop prints tracebacks of its own while it is torn down, which would bury the one line.
    # The workdir lock and open files were released when the error left `main`.
    os._exit(2)


def _silence_closed_event_loop_noise():
  """After a failed restore, orbax's background threads report `RuntimeError: Event loop is
  closed` as they are torn down; drop those reports (only those) so the one error line stands."""
  def is_noise(exc_type, exc_value) -> bool:
    return exc_type is RuntimeError and "Event loop is closed" in str(exc_value)

  unraisable, thread_hook = sys.unraisablehook, threading.excepthook

  def on_unraisable(info):
    if not is_noise(info.exc_type, info.exc_value):
      unraisable(info)

  def on_thread_error(args):
    if not is_noise(args.exc_type, args.exc_value):
      thread_hook(args)

  sys.unraisablehook = on_unraisable
  threading.excepthook = on_thread_error


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


if __name__ == "__main__":
  run()
