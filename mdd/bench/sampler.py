r"""Sampler throughput and its overhead over the model: images/s, latency, loop overhead.

  python -m mdd.bench.sampler --variant=B --grids=16,32 --steps=8,16,32 --batches=1,8,32 \
      --out=benchmarks/sampler.json

A denoiser of the given variant with fresh parameters (speed only: untrained weights sample
the same program), bfloat16, classifier-free guidance on every step and `--edit_passes` post-
fill edit passes. For each (grid, batch) it times one model call as the sampler makes it (the
2B-row CFG forward, logits and the guided mix: `mdd.sampling.sampler.model_logits`), then the
whole `sample` for each step count. `overhead` = sample time / ((steps + edit passes) x that
call): 1.00 means the loop costs nothing beyond the model. Step counts are swept at the middle
batch, batches at the middle step count. Prints a table; `--out` writes JSON after every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdd import sampling as sampler_lib
from mdd.bench import rates
from mdd.bench import train_step as train_step_bench
from mdd.models import system as system_lib
from mdd.sampling import sampler as sampler_core


def _median_s(fn, repeats: int) -> float:
  """Median seconds of `fn()` to its device result, after one (compiling) call."""
  return rates.median_seconds(lambda: jax.block_until_ready(fn()), repeats)


def build(variant: str, vocab: int, text_len: int, dtype: str, attention: str):
  """The train-step benchmark's denoiser, with plain CE and no edit training (sampling reads
  neither) so no neighbour table is needed, and fresh parameters."""
  c = train_step_bench.make_config(variant, "chunked", attention=attention, remat=False,
                                   text_len=text_len, dtype=dtype)
  c.loss.type = "ce"
  c.masking.edit_fraction = 0.0
  system = system_lib.system_from_config(c, vocab_size=vocab)
  params = jax.jit(system.init_params)(jax.random.key(0))
  return system, params


def measure(system, params, grid: int, batch: int, steps: list[int], args) -> list[dict]:
  rng = np.random.default_rng(batch)
  prompts = [" ".join(rng.choice(["a", "red", "blue", "square", "circle", "photo", "of", "two"],
                                 size=12)) for _ in range(batch)]
  context = system.sampling_context(params, prompts)
  logits_fn = system.logits_fn((grid, grid))
  mask_id = system.denoiser.mask_id
  tokens = jnp.full((batch, grid, grid), mask_id, jnp.int32)
  base = sampler_lib.SamplerConfig(mask_id=mask_id, guidance_scale=args.guidance,
                                   num_edit_passes=args.edit_passes, record_trajectory=False)
  flat = tokens.reshape(batch, -1)
  forward = jax.jit(lambda ctx, t: sampler_core.model_logits(
      logits_fn, ctx, t, jnp.int32(0), jnp.float32(0.0), jnp.float32(args.guidance), base))
  forward_s = _median_s(lambda: forward(context, flat), args.repeats)
  rows = []
  for num_steps in steps:
    cfg = dataclasses.replace(base, num_steps=num_steps)
    run = lambda: sampler_lib.sample(logits_fn, jax.random.key(0), tokens, cfg,  # noqa: E731
                                     context=context).tokens
    start = time.perf_counter()
    out = jax.block_until_ready(run())
    first_s = time.perf_counter() - start
    if bool(jnp.any(out == mask_id)):
      raise AssertionError("the sampler left masked positions")
    sample_s = _median_s(run, args.repeats)
    calls = num_steps + args.edit_passes
    rows.append({"grid": grid, "tokens": grid * grid, "batch": batch, "steps": num_steps,
                 "edit_passes": args.edit_passes, "guidance": args.guidance,
                 "forward_ms": 1e3 * forward_s, "sample_ms": 1e3 * sample_s,
                 "first_call_s": first_s, "images_per_s": batch / sample_s,
                 "overhead": sample_s / (calls * forward_s)})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.sampler",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="B")
  parser.add_argument("--vocab", type=int, default=2 ** 16)
  parser.add_argument("--grids", default="16,32")
  parser.add_argument("--steps", default="8,16,32")
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--guidance", type=float, default=3.0)
  parser.add_argument("--edit_passes", type=int, default=2)
  parser.add_argument("--text_len", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--attention", default="cudnn", help="'' = XLA's attention")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  steps = [int(s) for s in args.steps.split(",")]
  batches = [int(b) for b in args.batches.split(",")]
  mid_steps, mid_batch = steps[len(steps) // 2], batches[len(batches) // 2]
  system, params = build(args.variant, args.vocab, args.text_len, args.dtype, args.attention)
  payload = {"device": device.device_kind, "backend": device.platform, "jax": jax.__version__,
             "args": vars(args), "rows": []}
  print(f"{'grid':>4} {'batch':>5} {'steps':>5} {'fwd ms':>8} {'sample ms':>10} "
        f"{'img/s':>8} {'overhead':>8}", flush=True)
  for grid in (int(g) for g in args.grids.split(",")):
    plan = [(mid_batch, steps)] + [(b, [mid_steps]) for b in batches if b != mid_batch]
    for batch, step_list in plan:
      try:
        rows = measure(system, params, grid, batch, step_list, args)
      except Exception as e:  # pylint: disable=broad-except
        rows = [{"grid": grid, "batch": batch,
                 "error": rates.error_text(e)}]
      for row in rows:
        payload["rows"].append(row)
        if "error" in row:
          print(f"{grid:>4} {batch:>5}  error: {row['error'][:90]}", flush=True)
        else:
          print(f"{grid:>4} {batch:>5} {row['steps']:>5} {row['forward_ms']:8.2f} "
                f"{row['sample_ms']:10.1f} {row['images_per_s']:8.1f} {row['overhead']:8.3f}",
                flush=True)
      rates.write_json(args.out, payload)
  return payload


if __name__ == "__main__":
  main()
