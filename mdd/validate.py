"""Config checks that run before anything compiles: one clear line per problem.

Each check reads only the fields it knows and skips sections a config does not have, so the
same function serves every experiment file. Names are checked against the registries they
select from (stages, data sources, text encoders, losses, unmask policies, evaluations), so a
new entry there is valid here at once. Problems are returned, not raised, so a user sees all of
them at once.
"""

from __future__ import annotations

import math
from typing import Any

from mdd import stages
from mdd import workdir as workdir_lib
from mdd.data import sources
from mdd.eval import registry as eval_registry
from mdd.models import text as text_encoders
from mdd.models import tokenizer as tokenizer_lib
from mdd.objectives import losses
from mdd.sampling import config as sampler_config

MESH_AXES = ("data", "fsdp", "tensor")
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
  if source not in sources.SOURCES:
    problems.append(f"data.source={source!r}: must be one of {sorted(sources.SOURCES)}")
  else:
    entry = sources.SOURCES[source]
    noise = float(data.get("noise_std", 0.0) or 0.0)
    if noise < 0:
      problems.append(f"data.noise_std={noise}: must be >= 0")
    elif noise > 0 and source != "shapes":
      problems.append(f"data.noise_std={noise}: adds noise to ShapeGen images only, and "
                      f"data.source={source!r}")
    if source == "folder" and not float(data.get("validation_fraction", 0.0)) > 0:
      problems.append("data.validation_fraction: must be > 0 for data.source='folder' (the "
                      "tokenizer's eval and the denoiser's held-out batches read the validation "
                      "split), e.g. 0.01")
    if entry.splits:
      for path in ("tokenizer.eval.split", "tokenizer.pretokenize.splits"):
        value = _get(config, path)
        names = [value] if isinstance(value, str) else list(value or ())
        bad = [n for n in names if n and n not in entry.splits]
        if bad:
          problems.append(f"{path}={value!r}: data.source={source!r} has splits "
                          f"{list(entry.splits)}")
    for field in entry.required:
      if not data.get(field):
        hint = f" ({entry.hint})" if entry.hint else ""
        problems.append(f"data.{field}: required when data.source={source!r}{hint}")
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


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _check_positive(config, paths: list[str], problems: list[str]):
  for path in paths:
    value = _get(config, path)
    if value is not None and (not _is_number(value) or value <= 0):
      problems.append(f"{path}={value!r}: must be a finite number > 0")


def _check_positive_int(config, paths: list[str], problems: list[str], minimum: int = 1):
  for path in paths:
    value = _get(config, path)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < minimum):
      problems.append(f"{path}={value!r}: must be an int >= {minimum}")


def _check_tokenizer_model(config, problems: list[str]):
  model = _get(config, "tokenizer.model")
  if model is None:
    return
  if model.get("variant") not in tokenizer_lib.VARIANTS:
    problems.append(f"tokenizer.model.variant={model.get('variant')!r}: must be one of "
                    f"{sorted(tokenizer_lib.VARIANTS)}")
  if model.get("downsample_factor") not in (2, 4, 8, 16):
    problems.append(f"tokenizer.model.downsample_factor={model.get('downsample_factor')!r}: "
                    "must be 2, 4, 8 or 16")
  if model.get("quantizer") not in ("vq", "fsq"):
    problems.append(f"tokenizer.model.quantizer={model.get('quantizer')!r}: must be vq or fsq")
  if model.get("encoder", "conv") not in ("conv", "patch"):
    problems.append(f"tokenizer.model.encoder={model.get('encoder')!r}: must be conv or patch")
  if model.get("quantizer") == "vq":
    _check_positive_int(config, ["tokenizer.model.vocab_size", "tokenizer.model.code_dim"],
                        problems, minimum=2)


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
  if mode not in stages.MODES:
    problems.append(f"mode={mode!r}: must be one of {stages.MODES}")
  else:
    _check_sections(config, problems)
  _check_mesh(config, problems)
  _check_data(config, problems)
  _check_positive(config, ["tokenizer.optimizer.lr", "denoiser_train.optim.lr"], problems)
  _check_positive_int(config, [
      "tokenizer.num_steps", "tokenizer.batch_size", "denoiser_train.num_steps",
      "denoiser_train.batch_size", "sampler.num_steps", "tokenizer.loop.log_every",
      "tokenizer.loop.ckpt_every", "tokenizer.loop.keep_checkpoints",
      "denoiser_train.log_every", "denoiser_train.ckpt_every", "denoiser_train.keep_checkpoints",
      "denoiser_train.eval_batches", "tokenizer.eval.num_examples", "tokenizer.eval.batch_size",
      "tokenizer.pretokenize.shard_size", "tokenizer.pretokenize.batch_size",
      "sample.batch_size", "sample.num_per_prompt", "eval.shapes_geneval.batch_size",
      "eval.shapes_geneval.images_per_prompt",
  ], problems)
  _check_positive_int(config, [
      "tokenizer.loop.summary_every", "tokenizer.loop.eval_every", "denoiser_train.summary_every",
      "denoiser_train.eval_every", "sample.seed_offset",
  ], problems, minimum=0)
  for path in ("tokenizer.loop.nonfinite", "denoiser_train.nonfinite"):
    _check_choice(config, path, ("stop", "skip"), problems)
  _check_tokenizer_model(config, problems)
  _check_fraction(config, [
      "loss.ce_mix", "masking.edit_fraction", "denoiser_train.cfg_drop_prob",
      "sampler.edit_threshold",
  ], problems)
  for path in ("denoiser.width", "denoiser.depth", "denoiser.num_heads", "denoiser.mlp_dim"):
    value = _get(config, path)
    if value is not None and (not isinstance(value, int) or value < 0):
      problems.append(f"{path}={value!r}: must be an int >= 0 (0 = the variant's)")
  _check_patch_size(config, problems)
  _check_choice(config, "loss.mode", losses.MODES, problems)
  _check_choice(config, "loss.type", tuple(losses.LOSSES), problems)
  _check_choice(config, "loss.impl", losses.IMPLS, problems)
  _check_choice(config, "text.kind", tuple(text_encoders.ENCODERS), problems)
  _check_sampler(config, problems)
  _check_plan(config, problems)
  _check_init_from(config, problems)
  if _get(config, "eval") is not None and "eval" in _stages_or_none(config):
    problems.extend(eval_registry.problems(config.eval))
  return problems


def _stages_or_none(config) -> tuple[str, ...]:
  try:
    return stages.stages_of(config) if config.get("mode") in stages.MODES else ()
  except ValueError:
    return ()


def _check_sections(config, problems: list[str]):
  """Every section the run's stages read is present."""
  try:
    run_stages = stages.stages_of(config)
  except ValueError as e:
    problems.append(str(e))
    return
  for stage in run_stages:
    missing = [s for s in stages.SECTIONS[stage] if _get(config, s) is None]
    if missing:
      problems.append(f"the {stage} stage reads config sections {missing}, which this config "
                      "lacks (start the config from mdd.defaults.base_config())")


def _check_init_from(config, problems: list[str]):
  """`denoiser_train.init_from` names a trained run, checked when a stage that reads it runs."""
  init_from = _get(config, "denoiser_train.init_from")
  if not init_from:
    return
  if not isinstance(init_from, str):
    problems.append(f"denoiser_train.init_from={init_from!r}: must be a workdir path")
    return
  if not {"train_tokenizer", "train"} & set(_stages_or_none(config)):
    return
  problem = workdir_lib.Workdir(init_from).source_problem()
  if problem:
    problems.append(f"denoiser_train.init_from={init_from!r}: {problem}")


def _check_plan(config, problems: list[str]):
  """The `plan` section (mode=plan): a stated device memory is a finite number >= 0."""
  value = _get(config, "plan.device_memory_gb")
  if value is not None and (not _is_number(value) or value < 0):
    problems.append(f"plan.device_memory_gb={value!r}: must be a finite number >= 0 (GiB per "
                    "device; 0 = the backend's own limit)")


def _check_choice(config, path: str, choices, problems: list[str]):
  value = _get(config, path)
  if value is not None and value not in choices:
    problems.append(f"{path}={value!r}: must be one of {', '.join(sorted(choices))}")


def _check_sampler(config, problems: list[str]):
  """The sampler section builds a `SamplerConfig` (whose checks name the bad field)."""
  section = _get(config, "sampler")
  if section is None:
    return
  try:
    sampler_config.SamplerConfig.from_config(section, mask_id=0)
  except (ValueError, TypeError) as e:
    problems.append(str(e).replace("sampler config: ", "sampler: ", 1))
