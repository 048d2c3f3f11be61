r"""`--config.mode=plan`: the per-device memory of a run's train step, before anything allocates.

  python -m mdd.main --config=configs/t2i.py:variant=3B --workdir=DIR --config.mode=plan \
      --config.plan.device_memory_gb=80

For the config's mesh and sharding rules it prints, per device, the bytes of the denoiser's
parameters, optimizer state and EMA copy (from the loop's abstract state: each leaf's shard
shape under its sharding, nothing allocated), the step's temporaries twice (XLA's own count
from the compiled step's `memory_analysis()`, and the analytic estimate below), and the total
against `plan.device_memory_gb` (0 = the backend's `bytes_limit`). The plan goes to
DIR/plan.json; a config that cannot fit is refused with one line naming the largest term.
When the state alone cannot fit, the plan refuses without compiling.

Analytic temporaries of one train step, per device (`denoiser_temporaries`):

  update       = params + optimizer state + EMA: the NaN guard (`loop.jit_train_step`) builds
                 the new state beside the old one and keeps the old one until the new one is
                 known finite; the gradients share those buffers.
  activations  = n * depth * (P * a_pos + 2 * S * D / t) * bytes(dtype), no remat;
                 n * (depth * P * D + P * a_pos + 2 * S * D / t) * bytes(dtype), remat (only the
                 block inputs are kept; one block is recomputed at a time in the backward).
  a_pos        = 6 D + (6 D + 3 M + H (P + S)) / t   elements saved per position and block:
                 the three norm inputs and outputs (6 D); self-attention q, k, v and output
                 (4 D), cross-attention q and output (2 D), the SwiGLU gate, up and product
                 (3 M) and the attention probabilities (H (P + S)), split over `t` tensor ways.
  head         = n * N * D * 2 * bytes(dtype) (+ n * N * V / t_v * 4 * 2 with loss.impl=xla:
                 the fp32 logits and their gradient).
  text         = a trainable text encoder's blocks, the same count without cross-attention.
  fsdp gather  = when weights are split (fsdp): without remat the whole unsharded parameters
                 less this device's shard (XLA keeps the forward's all-gathers alive for the
                 backward); with remat 2 blocks' weights in the compute dtype (one gathered for
                 the forward, one for the recomputation).

with n = examples per device (global batch / batch ways), N = tokens per image, P = positions
(N / patch_size^2), S = text tokens + the null token, D, M, H the width, MLP width and heads.
Dropped: norms' statistics, RoPE tables, masking and loss bookkeeping of O(N) per example.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdd import workdir as workdir_lib
from mdd.models import tokenizer as tokenizer_lib
from mdd.models import system as system_lib
from mdd.train import denoiser as denoiser_train
from mdd.train import loop
from mdd.train import tokenizer as tokenizer_train
from mdd.utils import sharding as sharding_lib
from mdd.utils import fileio

GIB = 2 ** 30


# --------------------------------------------------------------------------------------------
# Per-device bytes of abstract (sharded) arrays.


def shard_bytes(tree) -> int:
  """Bytes one device holds of `tree`'s leaves (ShapeDtypeStructs with shardings; a leaf
  without a sharding counts in full)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def state_terms(state) -> dict[str, int]:
  """{params, optimizer, ema, other} per-device bytes of an abstract `TrainState`."""
  terms = {"params": shard_bytes(state.params), "optimizer": shard_bytes(state.opt_state),
           "ema": shard_bytes(state.ema_params) if state.ema_params is not None else 0}
  terms["other"] = shard_bytes(state) - sum(terms.values())
  return terms


def _ways(mesh, rules, name: str) -> int:
  """How many ways the mesh splits logical axis `name` under `rules` (1 = replicated)."""
  axes = dict(rules).get(name)
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes if a is not None)


# --------------------------------------------------------------------------------------------
# The denoiser: its system, state and batch without a trained tokenizer.


def _vocab_and_table(config, run_dir: workdir_lib.Workdir):
  """(V, neighbour table or None): the run's table when the tokenizer is trained, else a
  placeholder of the shape the tokenizer config will produce (memory depends on shapes only)."""
  if fileio.exists(run_dir.neighbours_file):
    table = run_dir.load_neighbours()
    return table.vocab_size, (table.neighbours, table.weights)
  model = config.tokenizer.model
  if int(config.denoiser.get("vocab_size", 0)):
    vocab = int(config.denoiser.vocab_size)
  else:
    vocab = tokenizer_lib.tokenizer_from_config(config.tokenizer).num_codes
  k = (1 + 2 * len(model.fsq_levels) if model.quantizer == "fsq"
       else int(config.tokenizer.neighbours.k))
  ids = np.zeros((vocab, k), np.int32)
  return vocab, (ids, np.full((vocab, k), 1.0 / k, np.float32))


@dataclasses.dataclass
class DenoiserSetup:
  """What the plan of the denoiser's step reads: its system, task, mesh and abstract inputs."""
  system: system_lib.DenoiserSystem
  task: loop.Task
  mesh: Any
  rules: Any
  state: Any        # abstract TrainState, leaves carry their shardings
  shardings: Any
  batch: dict       # abstract global batch with the loop's batch shardings
  grid: tuple[int, int]
  text_len: int


def denoiser_setup(config, workdir: str) -> DenoiserSetup:
  run_dir = workdir_lib.Workdir(workdir)
  vocab, (ids, weights) = _vocab_and_table(config, run_dir)
  system = system_lib.system_from_config(config, vocab_size=vocab, neighbours=ids,
                                         neighbour_weights=weights)
  task = denoiser_train.make_task(config, system, lambda start_step: iter(()))
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config)
  state, shardings = loop.abstract_state(task, mesh, rules)
  grid = workdir_lib.token_grid(config)
  batch_size = int(config.denoiser_train.batch_size)
  if batch_size % sharding_lib.batch_size_divisor(mesh):
    raise ValueError(f"denoiser_train.batch_size={batch_size} is not a multiple of the "
                     f"{sharding_lib.batch_size_divisor(mesh)} batch shards of the mesh "
                     f"{dict(mesh.shape)}")
  text_len = int(config.data.max_text_len)
  shapes = {"tokens": ((batch_size, *grid), jnp.int32),
            "text_ids": ((batch_size, text_len), jnp.int32),
            "text_len": ((batch_size,), jnp.int32)}
  if not system.trainable_text:
    text_len = int(config.text.max_len)
    shapes["text_emb"] = ((batch_size, text_len, system.text_dim), jnp.float32)
    shapes["text_mask"] = ((batch_size, text_len), jnp.bool_)
  batch = {k: jax.ShapeDtypeStruct(s, d, sharding=sharding_lib.batch_sharding(mesh, len(s)))
           for k, (s, d) in shapes.items()}
  return DenoiserSetup(system=system, task=task, mesh=mesh, rules=rules, state=state,
                       shardings=shardings, batch=batch, grid=grid, text_len=text_len)


# --------------------------------------------------------------------------------------------
# Temporaries: analytic, and XLA's count of the compiled step.


def block_elements_per_position(width: int, mlp_dim: int, num_heads: int, keys: int,
                                tensor: int = 1) -> float:
  """Elements one pre-norm block saves for its backward per position (a_pos in the module
  docstring): `keys` = self-attention keys + cross-attention keys."""
  return 6 * width + (6 * width + 3 * mlp_dim + num_heads * keys) / tensor


def denoiser_temporaries(setup: DenoiserSetup, loss_impl: str) -> dict[str, int]:
  """The analytic temporaries of one train step per device (module docstring), by term."""
  model, system, mesh, rules = setup.system.denoiser, setup.system, setup.mesh, setup.rules
  n = int(setup.batch["tokens"].shape[0]) // sharding_lib.batch_size_divisor(mesh)
  act = np.dtype(model.dtype).itemsize
  t = _ways(mesh, rules, "act_heads")
  tokens = setup.grid[0] * setup.grid[1]
  positions = tokens // (model.patch_size ** 2)
  keys = setup.text_len + 1  # The null text token is always appended.
  d, m, h = model.width, model.mlp_dim, model.num_heads
  per_block = positions * block_elements_per_position(d, m, h, positions + keys, t)
  per_block += 2 * keys * d / t  # Cross-attention keys and values of the text.
  if model.remat:
    elements = model.depth * positions * d + per_block
  else:
    elements = model.depth * per_block
  terms = {"update": sum(state_terms(setup.state)[k] for k in ("params", "optimizer", "ema")),
           "activations": int(n * elements * act)}
  head = n * tokens * d * 2 * act
  if loss_impl == "xla":
    head += n * tokens * model.vocab_size // _ways(mesh, rules, "act_vocab") * 4 * 2
  terms["head"] = int(head)
  if system.trainable_text:
    enc = system.text_encoder
    text_tokens = setup.text_len
    per_pos = 4 * enc.width + (4 * enc.width + 3 * enc.mlp_dim + enc.num_heads * text_tokens) / t
    terms["text"] = int(n * enc.depth * text_tokens * per_pos * act)
  gathered = _global_bytes(setup.state.params) - shard_bytes(setup.state.params)
  if gathered and model.remat:
    attention = 4 * d * d + 2 * d * d + 2 * system.text_dim * d  # self q,k,v,o; cross q,o,k,v
    terms["fsdp_gather"] = int(2 * (attention + 3 * d * m) * act)
  elif gathered:
    terms["fsdp_gather"] = int(gathered)
  return terms


def _global_bytes(tree) -> int:
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def compiled_memory(setup: DenoiserSetup) -> dict[str, int] | None:
  """XLA's memory analysis of the compiled train step on this backend (per device), or None
  where the backend does not report one. Compiles; allocates nothing."""
  step = loop.jit_train_step(setup.task, setup.shardings, jax.random.key(0))
  with sharding_lib.mesh_context(setup.mesh, setup.rules):
    compiled = step.lower(setup.state, setup.batch,
                          jax.ShapeDtypeStruct((), jnp.int32)).compile()
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if stats is None:
    return None
  out = {name: int(getattr(stats, f"{name}_size_in_bytes"))
         for name in ("argument", "output", "alias", "temp", "generated_code")}
  # Donated state buffers are both arguments and outputs: count them once.
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


# --------------------------------------------------------------------------------------------
# The plan.


def device_memory_bytes(config) -> tuple[int, str]:
  """(bytes per device to fit, where the number comes from)."""
  stated = float(config.plan.get("device_memory_gb", 0.0))
  if stated > 0:
    return int(stated * GIB), "plan.device_memory_gb"
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{jax.devices()[0].platform} bytes_limit"
  raise ValueError(f"plan.device_memory_gb=0 and the {jax.devices()[0].platform} backend "
                   "reports no memory limit: state the device memory, e.g. "
                   "--config.plan.device_memory_gb=80")


# Plan keys -> the names a person reads in the table and in the refusal.
LABELS = {"params": "parameters", "optimizer": "optimizer state", "ema": "EMA params",
          "other": "other state", "batch": "batch", "compiled_temp": "temporaries (XLA)",
          "update": "new state (NaN guard)", "activations": "activations",
          "head": "head and logits", "text": "text encoder activations",
          "fsdp_gather": "fsdp weight gathers"}


def denoiser_plan(config, workdir: str) -> tuple[dict, DenoiserSetup]:
  """(the denoiser's per-device memory plan, JSON-ready: state terms and analytic temporaries;
  the setup `finish_plan` compiles)."""
  setup = denoiser_setup(config, workdir)
  model = setup.system.denoiser
  state = state_terms(setup.state)
  state["batch"] = shard_bytes(setup.batch)
  analytic = denoiser_temporaries(setup, str(config.loss.impl))
  plan = {
      "variant": str(config.denoiser.variant),
      "model": dict(width=model.width, depth=model.depth, num_heads=model.num_heads,
                    mlp_dim=model.mlp_dim, vocab_size=model.vocab_size, remat=model.remat,
                    dtype=np.dtype(model.dtype).name, patch_size=model.patch_size),
      "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
      "batch_size": int(config.denoiser_train.batch_size),
      "grid": list(setup.grid),
      "param_count": {k: int(sum(math.prod(x.shape) for x in jax.tree.leaves(v)))
                      for k, v in setup.state.params.items()},
      "param_bytes": {k: shard_bytes(v) for k, v in setup.state.params.items()},
      "state": state,
      "analytic_temp": analytic,
      "analytic_total": sum(state.values()) + sum(analytic.values()),
      "compiled": None,
  }
  return plan, setup


def finish_plan(plan: dict, setup: DenoiserSetup, memory: int, source: str, *,
                compile_step: bool) -> dict:
  """Adds the compiled analysis (with `compile_step`, when the state can fit at all), the total
  and the verdict. The terms named in a refusal are the ones the total sums."""
  state_total = sum(plan["state"].values())
  if compile_step and state_total <= memory:
    plan["compiled"] = compiled_memory(setup)
  terms = dict(plan["state"])
  if plan["compiled"] is not None:
    terms["compiled_temp"] = plan["compiled"]["temp"]
    plan["total"] = plan["compiled"]["total"]
    plan["total_source"] = "compiled"
  elif state_total <= memory:
    terms.update(plan["analytic_temp"])
    plan["total"], plan["total_source"] = plan["analytic_total"], "analytic"
  else:  # The state alone does not fit: that is the verdict, whatever the temporaries.
    plan["total"], plan["total_source"] = state_total, "state (no compile)"
  largest = max(terms, key=terms.get)
  plan.update(device_memory=memory, device_memory_source=source,
              largest_term=LABELS[largest], largest_term_bytes=terms[largest],
              fits=plan["total"] <= memory)
  return plan


def tokenizer_state_plan(config) -> dict[str, int]:
  """Per-device bytes of the tokenizer stage's state (generator, discriminator, code stats)."""
  task = tokenizer_train.make_task(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  state, _ = loop.abstract_state(task, mesh, sharding_lib.rules_from_config(config))
  out = {f"generator_{k}": v for k, v in state_terms(state.generator).items()}
  if state.discriminator is not None:
    out.update({f"discriminator_{k}": v for k, v in state_terms(state.discriminator).items()})
  out["code_stats"] = shard_bytes((state.code_usage, state.code_last_used))
  return out


def _gib(n: int) -> str:
  return f"{n / GIB:9.3f} GiB"


def format_table(plan: dict) -> str:
  """The plan as a short text table (GiB per device)."""
  model = plan["model"]
  lines = [f"memory plan: denoiser {plan['variant']} (D={model['width']}, depth "
           f"{model['depth']}, V={model['vocab_size']}, remat={model['remat']}, "
           f"{model['dtype']}), batch {plan['batch_size']} on a {plan['grid'][0]}x"
           f"{plan['grid'][1]} grid, mesh {plan['mesh']}",
           f"{'per device':34s} {'analytic':>13s} {'XLA':>13s}"]
  compiled = plan["compiled"]
  for key, value in plan["state"].items():
    lines.append(f"  {LABELS[key]:32s} {_gib(value)}")
  for key, value in plan["analytic_temp"].items():
    lines.append(f"  {LABELS[key]:32s} {_gib(value)}")
  analytic_temp = sum(plan["analytic_temp"].values())
  xla_temp = _gib(compiled["temp"]) if compiled else f"{'-':>13s}"
  lines.append(f"  {'temporaries':32s} {_gib(analytic_temp)} {xla_temp}")
  xla_total = _gib(compiled["total"]) if compiled else f"{'-':>13s}"
  lines.append(f"  {'total':32s} {_gib(plan['analytic_total'])} {xla_total}")
  verdict = "fits" if plan["fits"] else "does NOT fit"
  lines.append(f"  {'device memory':32s} {_gib(plan['device_memory'])}  "
               f"({plan['device_memory_source']}): {verdict} ({plan['total_source']} total; "
               f"largest term: {plan['largest_term']})")
  if "tokenizer" in plan:
    tok = plan["tokenizer"]
    lines.append(f"tokenizer stage state: {_gib(sum(tok.values())).strip()} per device (" +
                 ", ".join(f"{k} {v / GIB:.3f}" for k, v in tok.items() if v) + " GiB)")
  return "\n".join(lines)


def read_plan(workdir: str) -> dict:
  """The plan a `--config.mode=plan` run wrote to DIR/plan.json."""
  return fileio.read_json(workdir_lib.Workdir(workdir).plan_file,
                          fix="run --config.mode=plan again to rewrite it")


def run(config, workdir: str):
  """Prints the plan, writes DIR/plan.json, and refuses (ValueError) a config that cannot fit."""
  memory, source = device_memory_bytes(config)
  plan = finish_plan(*denoiser_plan(config, workdir), memory, source,
                     compile_step=bool(config.plan.get("compile", True)))
  if bool(config.plan.get("tokenizer", True)):
    plan["tokenizer"] = tokenizer_state_plan(config)
  if jax.process_index() == 0:
    print(format_table(plan), flush=True)
    fileio.write_json_atomic(workdir_lib.Workdir(workdir).plan_file, plan)
  if not plan["fits"]:
    raise ValueError(
        f"does not fit: {plan['total'] / GIB:.1f} GiB per device > {memory / GIB:.3g} GiB; "
        f"largest term: {plan['largest_term']} {plan['largest_term_bytes'] / GIB:.1f} GiB "
        f"(denoiser {plan['variant']}, mesh {plan['mesh']}; the breakdown is in "
        f"{workdir_lib.Workdir(workdir).plan_file})")
