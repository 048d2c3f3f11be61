r"""Weak scaling of the denoiser train step over the devices of one host (data or FSDP mesh).

  python -m mdd.bench.scaling --variants=B,1B --grid=32 --tokens_per_device=16384 \
      --devices=1,2,4 --meshes=data,fsdp --out=benchmarks/scaling.json

Every device keeps the same share of the batch (`--tokens_per_device`), so perfect weak scaling
keeps the step time flat: efficiency(n) = step time on 1 device / step time on n devices, for
the same variant and mesh kind. The step is the train loop's own (`loop.jit_train_step` over
`denoiser.make_task`'s state: donated buffers, the NaN guard, EMA when configured) with the
state placed by the config's logical sharding rules on the mesh: `data` replicates parameters
and optimizer state and splits the batch; `fsdp` splits parameters and optimizer state as well
(and the batch over the same axis). A row that runs out of memory is recorded as not fitting,
so the largest variant that fits each mesh can be read off the table. Random token grids and
neighbour tables, as `mdd.bench.train_step`. Prints a table; `--out` writes JSON after every
row. TensorFlow is not needed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdd.bench import rates
from mdd.bench import train_step as train_step_bench
from mdd.models import flops as flops_lib
from mdd.models import system as system_lib
from mdd.train import denoiser as denoiser_task
from mdd.train import loop
from mdd.utils import oom
from mdd.utils import sharding as sharding_lib

MESH_KINDS = ("data", "fsdp")


def run_one(variant: str, num_devices: int, kind: str, args) -> dict:
  """Compiles and times one (variant, devices, mesh kind); returns its row (raises on OOM)."""
  if kind not in MESH_KINDS:
    raise ValueError(f"mesh kind {kind!r}: expected one of {MESH_KINDS}")
  devices = jax.devices()[:num_devices]
  if len(devices) < num_devices:
    raise ValueError(f"{num_devices} devices asked for, {len(jax.devices())} present")
  mesh = sharding_lib.make_mesh({"data": num_devices if kind == "data" else 1,
                                 "fsdp": num_devices if kind == "fsdp" else 1, "tensor": 1},
                                devices)
  rules = sharding_lib.DEFAULT_RULES
  grid = args.grid
  per_device = max(1, args.tokens_per_device // (grid * grid))
  batch = per_device * num_devices
  config = train_step_bench.make_config(variant, args.impl, attention=args.attention,
                                        remat=bool(args.remat), text_len=args.text_len,
                                        dtype=args.dtype)
  nbr, nbr_w = train_step_bench.neighbour_table(args.vocab, args.k)
  system = system_lib.system_from_config(config, vocab_size=args.vocab, neighbours=nbr,
                                         neighbour_weights=nbr_w)
  task = denoiser_task.make_task(config, system, make_batches=lambda start: iter(()))
  with sharding_lib.mesh_context(mesh, rules):
    _, shardings = loop.abstract_state(task, mesh, rules)
    state = jax.jit(task.init_state, out_shardings=shardings)(jax.random.key(0))
    params = sum(int(x.size) for x in jax.tree.leaves(state.params))
    step = loop.jit_train_step(task, shardings, jax.random.key(1))
    batches = [sharding_lib.shard_batch(system.add_frozen_text(train_step_bench.random_batch(
        batch, grid, args.text_len, args.vocab, seed)), mesh) for seed in range(2)]
    start = time.perf_counter()
    compiled = step.lower(state, batches[0], jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()

    def advance(i):
      nonlocal state
      state, metrics = compiled(state, batches[i % 2], jnp.int32(i))
      return metrics["loss"]

    first_loss, last_loss, windows = rates.time_windows(advance, args.steps, args.windows)
  del state
  if not np.isfinite(last_loss):
    raise FloatingPointError(f"{variant}/{num_devices}/{kind}: non-finite loss {last_loss}")
  step_s = statistics.median(windows)
  model_flops = flops_lib.train_step_flops(system, batch, (grid, grid), args.text_len)
  return {"variant": variant, "devices": num_devices, "mesh": kind, "grid": grid,
          "batch": batch, "batch_per_device": per_device, "params": params,
          "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "step_ms_windows": [1e3 * t for t in windows],
          "tokens_per_s": batch * grid * grid / step_s,
          "tflops_per_device": model_flops / step_s / num_devices / 1e12,
          "first_loss": first_loss, "last_loss": last_loss,
          "temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1,
          "argument_bytes": int(getattr(mem, "argument_size_in_bytes", -1)) if mem else -1}


def add_efficiency(rows: list[dict]) -> None:
  """Sets `efficiency` = step time on the fewest devices / this row's, per (variant, mesh)."""
  base: dict[tuple[str, str], dict] = {}
  for row in sorted((r for r in rows if "error" not in r), key=lambda r: r["devices"]):
    ref = base.setdefault((row["variant"], row["mesh"]), row)
    row["efficiency"] = ref["step_ms"] / row["step_ms"]
    row["efficiency_from_devices"] = ref["devices"]


def _format(row: dict) -> str:
  if "error" in row:
    return f"{row['variant']:>4} {row['mesh']:>5} {row['devices']:>3}  {row['error'][:90]}"
  return (f"{row['variant']:>4} {row['mesh']:>5} {row['devices']:>3} {row['batch']:>6} "
          f"{row['step_ms']:9.1f} {row['tokens_per_s']:11.0f} {row['tflops_per_device']:8.1f} "
          f"{row.get('efficiency', float('nan')):6.3f} {row['compile_s']:8.1f}")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.scaling",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="B")
  parser.add_argument("--grid", type=int, default=32, help="token grid side")
  parser.add_argument("--tokens_per_device", type=int, default=16384)
  parser.add_argument("--devices", default="1,2,4", help="device counts (the first n devices)")
  parser.add_argument("--meshes", default="data,fsdp", help="mesh kinds: data, fsdp")
  parser.add_argument("--impl", default="pallas", help="loss.impl: xla, chunked, pallas")
  parser.add_argument("--vocab", type=int, default=2 ** 16)
  parser.add_argument("--k", type=int, default=16, help="neighbours per code")
  parser.add_argument("--text_len", type=int, default=128)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--attention", default="cudnn", help="'' = XLA's attention")
  parser.add_argument("--remat", type=int, default=0, help="block remat: 0 or 1")
  parser.add_argument("--steps", type=int, default=5, help="steps per timing window")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  counts = [int(n) for n in args.devices.split(",") if n.strip()]
  available = len(jax.devices())
  if not counts or min(counts) < 1 or max(counts) > available:
    parser.error(f"--devices={args.devices}: counts must be 1..{available} (devices present)")
  device = jax.devices()[0]
  payload = {"device": device.device_kind, "backend": device.platform, "jax": jax.__version__,
             "devices_present": available, "args": vars(args), "rows": []}
  print(f"{available} x {device.device_kind}; weak scaling, "
        f"{args.tokens_per_device} tokens per device", flush=True)
  print(f"{'var':>4} {'mesh':>5} {'dev':>3} {'batch':>6} {'step ms':>9} {'tokens/s':>11} "
        f"{'TF/dev':>8} {'eff':>6} {'compile':>8}", flush=True)
  for variant in args.variants.split(","):
    for kind in args.meshes.split(","):
      for n in counts:
        try:
          row = run_one(variant, n, kind, args)
        except Exception as e:  # pylint: disable=broad-except
          why = ("does not fit: " if oom.is_accelerator_oom(e) else "") + rates.error_text(e)
          row = {"variant": variant, "devices": n, "mesh": kind, "error": why}
        payload["rows"].append(row)
        add_efficiency(payload["rows"])
        print(_format(row), flush=True)
        rates.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
