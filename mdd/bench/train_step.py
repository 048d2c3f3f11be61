r"""Denoiser train step: step time, tokens/s and MFU per variant, token grid and loss impl.

  python -m mdd.bench.train_step --variants=B,XL,1B --grids=16,32 --impls=pallas \
      --tokens_per_step=16384 --text_len=128 --attention=cudnn --profile \
      --out=benchmarks/train_step.json

One full step (text encoder, denoiser forward and backward, GCE loss, AdamW) in bfloat16 with
float32 master weights, on random token grids and random neighbour tables. MFU is the model
FLOPs of the step (`mdd.models.flops`: the products of the denoiser, the trainable text encoder
and the head, x3 for the backward; recomputation not counted) over the step time, against two
ceilings: the card's dense bf16 datasheet rate and the bf16 GEMM rate this run measures
(8192^3). Each (variant, grid, impl) runs without remat first and with block remat if that
does not fit; `--remat=1` forces it. Grid g is g x g tokens (16 = 256 px with a 16x
tokenizer). Prints a table; with `--out` writes JSON after every row. TensorFlow is not needed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from mdd import defaults
from mdd.bench import rates
from mdd.models import flops as flops_lib
from mdd.models import system as system_lib
from mdd.train import denoiser as denoiser_task
from mdd.train import state as state_lib
from mdd.utils import oom, profiling

def make_config(variant: str, impl: str, *, attention: str, remat: bool, text_len: int,
                dtype: str = "bfloat16"):
  c = defaults.base_config()
  c.denoiser.variant = variant
  c.denoiser.dtype = dtype
  c.denoiser.remat = remat
  c.denoiser.attention_impl = attention
  c.text.max_len = text_len
  c.data.max_text_len = text_len
  c.loss.impl = impl
  c.loss.type = "gce"
  c.masking.edit_fraction = 0.1
  return c


def neighbour_table(vocab: int, k: int, seed: int = 0):
  """A random GCE neighbour table (each code its own first neighbour) and its weights."""
  rng = np.random.default_rng(seed)
  nbr = rng.integers(0, vocab, size=(vocab, k)).astype(np.int32)
  nbr[:, 0] = np.arange(vocab)
  weights = rng.uniform(0.1, 1.0, size=(vocab, k)).astype(np.float32)
  return nbr, weights


def random_batch(batch: int, grid: int, text_len: int, vocab: int, seed: int) -> dict:
  """A host batch (int32 numpy) of random token grids and byte texts."""
  rng = np.random.default_rng(seed)
  return {
      "tokens": rng.integers(0, vocab, (batch, grid, grid)).astype(np.int32),
      "text_ids": rng.integers(2, 200, (batch, text_len)).astype(np.int32),
      "text_len": rng.integers(text_len // 2, text_len + 1, (batch,)).astype(np.int32),
  }


def run_one(variant: str, grid: int, impl: str, remat: bool, args, profile: bool) -> dict:
  """Compiles and times one configuration; returns its row (raises on OOM). `profile` adds a
  profiler trace of 3 steps."""
  batch = max(1, args.tokens_per_step // (grid * grid))
  config = make_config(variant, impl, attention=args.attention, remat=remat,
                       text_len=args.text_len, dtype=args.dtype)
  nbr, nbr_w = neighbour_table(args.vocab, args.k)
  system = system_lib.system_from_config(config, vocab_size=args.vocab, neighbours=nbr,
                                         neighbour_weights=nbr_w)
  tx = state_lib.make_optimizer(denoiser_task.optim_config(config.denoiser_train))
  state = jax.jit(lambda r: state_lib.TrainState.create(system.init_params(r), tx))(
      jax.random.key(0))
  params = sum(int(x.size) for x in jax.tree.leaves(state.params))
  step = jax.jit(denoiser_task.make_train_step(system), donate_argnums=0)
  batches = [jax.device_put(random_batch(batch, grid, args.text_len, args.vocab, seed))
             for seed in range(2)]
  start = time.perf_counter()
  compiled = step.lower(state, batches[0], jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  def advance(i):
    nonlocal state
    state, metrics = compiled(state, batches[i % 2], jax.random.key(i))
    return metrics["loss"]

  first_loss, last_loss, windows = rates.time_windows(advance, args.steps, args.windows)
  step_s = statistics.median(windows)
  model_flops = flops_lib.train_step_flops(system, batch, (grid, grid), args.text_len)
  row = {"variant": variant, "grid": grid, "tokens": grid * grid, "batch": batch, "impl": impl,
         "remat": remat, "attention": args.attention or "xla", "params": params,
         "compile_s": compile_s, "step_ms": 1e3 * step_s,
         "step_ms_windows": [1e3 * t for t in windows],
         "tokens_per_s": batch * grid * grid / step_s,
         "model_tflop_per_step": model_flops / 1e12,
         "achieved_tflops": model_flops / step_s / 1e12,
         "first_loss": first_loss, "last_loss": last_loss,
         "temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1,
         "argument_bytes": int(getattr(mem, "argument_size_in_bytes", -1)) if mem else -1}
  if not np.isfinite(last_loss):
    raise FloatingPointError(f"{variant}/{grid}/{impl}: non-finite loss {last_loss}")
  if profile:
    counter = iter(range(10_000))

    def one(_):
      nonlocal state
      state, m = compiled(state, batches[0], jax.random.key(next(counter)))
      return m["loss"]

    row["profile"] = profiling.profile_steps(one, 3)
  del state
  return row


def _format(row: dict) -> str:
  if "error" in row:
    return (f"{row['variant']:>4} {row['grid']:>4} {row['impl']:>8}  error: "
            f"{row['error'][:80]}")
  peak = f"{row['mfu_datasheet']:.3f}" if row.get("mfu_datasheet") is not None else "  -  "
  return (f"{row['variant']:>4} {row['grid']:>4} {row['batch']:>5} {row['impl']:>8} "
          f"{'y' if row['remat'] else 'n':>5} {row['step_ms']:9.1f} {row['tokens_per_s']:10.0f} "
          f"{row['achieved_tflops']:8.1f} {peak:>7} {row['mfu_gemm']:8.3f} "
          f"{row['compile_s']:8.1f}")


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.train_step",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="B")
  parser.add_argument("--grids", default="16,32", help="token grid sides")
  parser.add_argument("--impls", default="pallas", help="loss.impl values: xla,chunked,pallas")
  parser.add_argument("--vocab", type=int, default=2 ** 16)
  parser.add_argument("--k", type=int, default=16, help="neighbours per code")
  parser.add_argument("--tokens_per_step", type=int, default=16384)
  parser.add_argument("--text_len", type=int, default=128)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--attention", default="cudnn", help="'' = XLA's attention")
  parser.add_argument("--remat", type=int, default=-1, help="-1 = only if needed, 0, 1")
  parser.add_argument("--steps", type=int, default=5, help="steps per timing window")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--profile", action="store_true", help="trace the first row")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  peak = rates.datasheet_peak(device.device_kind)
  gemm = (rates.gemm_rate() if device.platform == "gpu"
          else rates.gemm_rate(size=1024, seconds=0.2))
  payload = {"device": device.device_kind, "backend": device.platform, "jax": jax.__version__,
             "args": vars(args),
             "datasheet_bf16_tflops": peak / 1e12 if peak else None,
             "measured_gemm_tflops": gemm / 1e12, "rows": []}
  print(f"{device.device_kind}: datasheet bf16 {peak / 1e12 if peak else float('nan'):.0f} "
        f"TFLOP/s, measured 8192^3 bf16 GEMM {gemm / 1e12:.0f} TFLOP/s", flush=True)
  print(f"{'var':>4} {'grid':>4} {'batch':>5} {'impl':>8} {'remat':>5} {'step ms':>9} "
        f"{'tokens/s':>10} {'TFLOP/s':>8} {'MFU(ds)':>7} {'MFU(gemm)':>8} {'compile':>8}",
        flush=True)
  profile_next = args.profile  # The first row that runs is traced.
  for variant in args.variants.split(","):
    for grid in (int(g) for g in args.grids.split(",")):
      for impl in args.impls.split(","):
        rem_options = [bool(args.remat)] if args.remat >= 0 else [False, True]
        row = None
        for remat in rem_options:
          try:
            row = run_one(variant, grid, impl, remat, args, profile=profile_next)
            break
          except Exception as e:  # pylint: disable=broad-except
            if oom.is_accelerator_oom(e) and remat is not rem_options[-1]:
              continue
            row = {"variant": variant, "grid": grid, "impl": impl, "remat": remat,
                   "error": rates.error_text(e)}
        if "error" not in row:
          profile_next = False
          row["mfu_datasheet"] = row["achieved_tflops"] * 1e12 / peak if peak else None
          row["mfu_gemm"] = row["achieved_tflops"] * 1e12 / gemm
        payload["rows"].append(row)
        print(_format(row), flush=True)
        rates.write_json(args.out, payload)
  for row in payload["rows"]:
    if "profile" in row:
      prof = row["profile"]
      print(f"\nprofile of {row['variant']} grid {row['grid']} {row['impl']}: device "
            f"{prof['device_ms_per_step']:.1f} ms/step of {row['step_ms']:.1f} ms wall")
      for c in prof["categories"]:
        print(f"  {c['ms']:8.2f} ms  {c['category']}")
      for k in prof["kernels"][:12]:
        print(f"  {k['ms']:8.2f} ms  {k['name'][:90]}")
  return payload


if __name__ == "__main__":
  main()
