"""Config checks that run before anything compiles: one clear line per problem.

Each check reads only the fields it knows and skips sections a config does not have, so the
same function serves every experiment file. Problems are returned, not raised, so a user sees
all of them at once.
"""

from __future__ import annotations

import math
from typing import Any

MODES = ("pipeline", "train_tokenizer", "pretokenize", "train", "sample", "eval")
MESH_AXES = ("data", "fsdp", "tensor")
DATA_SOURCES = ("shapes", "folder", "tfds")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024


def _valid_side(side) -> bool:
  return isinstance(side, int) and MIN_RESOLUTION <= side <= MAX_RESOLUTION


def _get(config, path: str, default: Any = None):
  node = config
  for part in path.split("."):
    if node is None or not hasattr(node, "get"):
      return default
    node = node.get(part, None)
  return default if node is None else node


def _check_mesh(config, problems: list[str]):
  mesh = _get(config, "mesh")
  if mesh is None:
    problems.append("mesh: missing (needs data, fsdp, tensor sizes)")
    return
  sizes = {}
  for axis in MESH_AXES:
    value = mesh.get(axis, None)
    if not isinstance(value, int) or (value < 1 and value != -1):
      problems.append(f"mesh.{axis}={value!r}: must be a positive int or -1")
    else:
      sizes[axis] = value
  if list(sizes.values()).count(-1) > 1:
    problems.append(f"mesh: at most one axis may be -1, got {sizes}")
  for axis in MESH_AXES:
    value = mesh.get(f"dcn_{axis}", 1)
    if not isinstance(value, int) or value < 1:
      problems.append(f"mesh.dcn_{axis}={value!r}: must be a positive int")


def check_mesh_fits(config, num_devices: int) -> list[str]:
  """Whether the mesh in `config` can be laid on `num_devices` devices."""
  mesh = _get(config, "mesh")
  sizes = [mesh.get(a, 1) for a in MESH_AXES]
  dcn = math.prod(mesh.get(f"dcn_{a}", 1) for a in MESH_AXES)
  known = math.prod(s for s in sizes if s != -1) * dcn
  if -1 in sizes:
    if num_devices % known:
      return [f"mesh {dict(zip(MESH_AXES, sizes))} x dcn {dcn} does not divide the "
              f"{num_devices} available devices"]
  elif known != num_devices:
    return [f"mesh {dict(zip(MESH_AXES, sizes))} x dcn {dcn} needs {known} devices, "
            f"{num_devices} are available"]
  return []


def _check_data(config, problems: list[str]):
  data = _get(config, "data")
  if data is None:
    return
  source = data.get("source", "shapes")
  if source not in DATA_SOURCES:
    problems.append(f"data.source={source!r}: must be one of {DATA_SOURCES}")
  if source == "folder" and not data.get("folder"):
    problems.append("data.folder: required when data.source='folder' (a directory with "
                    "manifest.jsonl)")
  if source == "tfds" and not data.get("tfds_name"):
    problems.append("data.tfds_name: required when data.source='tfds'")
  res = data.get("resolution", None)
  if res is not None:
    sides = res if isinstance(res, (tuple, list)) else (res,)
    for side in sides:
      if not _valid_side(side):
        problems.append(f"data.resolution={res!r}: sides must be ints in "
                        f"[{MIN_RESOLUTION}, {MAX_RESOLUTION}]")
        break
  if int(data.get("max_text_len", 1)) < 1:
    problems.append(f"data.max_text_len={data.get('max_text_len')}: must be >= 1")


def _check_positive(config, paths: list[str], problems: list[str]):
  for path in paths:
    value = _get(config, path)
    if value is not None and (not isinstance(value, (int, float)) or value <= 0):
      problems.append(f"{path}={value!r}: must be > 0")


def _check_fraction(config, paths: list[str], problems: list[str]):
  for path in paths:
    value = _get(config, path)
    if value is not None and not 0.0 <= float(value) <= 1.0:
      problems.append(f"{path}={value!r}: must be in [0, 1]")


def _check_patch_size(config, problems: list[str]):
  p = _get(config, "denoiser.patch_size")
  if p is None:
    return
  if not isinstance(p, int) or p < 1:
    problems.append(f"denoiser.patch_size={p!r}: must be an int >= 1")
    return
  res, f = _get(config, "data.resolution"), _get(config, "tokenizer.model.downsample_factor")
  if res is None or not isinstance(f, int) or f < 1:
    return
  for side in (res if isinstance(res, (tuple, list)) else (res,)):
    # A side out of range has its own problem line (_check_data); judge only valid ones.
    if _valid_side(side) and (side // f) % p:
      problems.append(f"denoiser.patch_size={p}: does not divide the {side // f}-token side of "
                      f"a {side}-px image at downsample factor {f}")
      return


def validate(config) -> list[str]:
  """All problems found in `config`, one line each (empty if it looks runnable)."""
  problems: list[str] = []
  mode = config.get("mode", None)
  if mode not in MODES:
    problems.append(f"mode={mode!r}: must be one of {MODES}")
  _check_mesh(config, problems)
  _check_data(config, problems)
  _check_positive(config, [
      "tokenizer.num_steps", "tokenizer.batch_size", "tokenizer.optimizer.lr",
      "denoiser_train.num_steps", "denoiser_train.batch_size", "denoiser_train.optim.lr",
      "sampler.num_steps",
  ], problems)
  _check_fraction(config, [
      "loss.ce_mix", "masking.edit_fraction", "denoiser_train.cfg_drop_prob",
      "sampler.edit_threshold",
  ], problems)
  for path in ("denoiser.width", "denoiser.depth", "denoiser.num_heads", "denoiser.mlp_dim"):
    value = _get(config, path)
    if value is not None and (not isinstance(value, int) or value < 0):
      problems.append(f"{path}={value!r}: must be an int >= 0 (0 = the variant's)")
  _check_patch_size(config, problems)
  loss_mode = _get(config, "loss.mode")
  if loss_mode is not None and loss_mode not in ("soft", "marginal"):
    problems.append(f"loss.mode={loss_mode!r}: must be 'soft' or 'marginal'")
  loss_type = _get(config, "loss.type")
  if loss_type is not None and loss_type not in ("ce", "gce"):
    problems.append(f"loss.type={loss_type!r}: must be 'ce' or 'gce'")
  impl = _get(config, "loss.impl")
  if impl is not None and impl not in ("auto", "xla", "chunked", "pallas"):
    problems.append(f"loss.impl={impl!r}: must be one of auto, xla, chunked, pallas")
  return problems
