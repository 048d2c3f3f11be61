r"""Denoiser train step with each GCE implementation: step time, peak memory, same loss.

  python -m mdd.bench.train_step --variant=S --vocab=65536 --batch=64 --grid=16 \
      --out=benchmarks/train_step.json

The fused kernel's claim in training, not in isolation: one full step (forward, backward, AdamW)
of a text-conditioned denoiser with a large vocabulary, `loss.impl` = xla | chunked | pallas.
Prints a table and, with `--out`, writes JSON (median step ms, peak device bytes where the
backend reports them, first-step loss). TensorFlow is not needed.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdd import defaults
from mdd.models import system as system_lib
from mdd.train import denoiser as denoiser_task
from mdd.train import state as state_lib


def _config(variant: str, impl: str, steps: int):
  c = defaults.base_config()
  c.denoiser.variant = variant
  c.loss.impl = impl
  c.loss.type = "gce"
  c.denoiser_train.num_steps = steps
  c.masking.edit_fraction = 0.1
  return c


def _table(vocab: int, k: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  nbr = rng.integers(0, vocab, size=(vocab, k)).astype(np.int32)
  nbr[:, 0] = np.arange(vocab)
  weights = rng.uniform(0.1, 1.0, size=(vocab, k)).astype(np.float32)
  return nbr, weights


def run_one(impl: str, args) -> dict:
  config = _config(args.variant, impl, args.steps)
  nbr, nbr_w = _table(args.vocab, args.k)
  system = system_lib.system_from_config(config, vocab_size=args.vocab, neighbours=nbr,
                                         neighbour_weights=nbr_w)
  tx = state_lib.make_optimizer(denoiser_task._optim_config(config.denoiser_train))  # pylint: disable=protected-access
  state = jax.jit(lambda r: state_lib.TrainState.create(system.init_params(r), tx))(
      jax.random.key(0))
  step = jax.jit(denoiser_task.make_train_step(system), donate_argnums=0)
  rng = np.random.default_rng(1)
  batch = {
      "tokens": jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.grid, args.grid)),
                            jnp.int32),
      "text_ids": jnp.asarray(rng.integers(2, 200, (args.batch, 64)), jnp.int32),
      "text_len": jnp.full((args.batch,), 40, jnp.int32),
  }
  times, first_loss = [], None
  for i in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(i))
    loss = float(metrics["loss"])
    times.append(time.perf_counter() - start)
    if first_loss is None:
      first_loss = loss
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"impl": impl, "step_ms_median": 1e3 * float(np.median(times[2:] or times)),
          "first_step_loss": first_loss, "last_loss": loss,
          "peak_bytes": int(stats.get("peak_bytes_in_use", -1))}


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.train_step",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="S")
  parser.add_argument("--vocab", type=int, default=2 ** 16)
  parser.add_argument("--k", type=int, default=16)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--grid", type=int, default=16)
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--impls", default="xla,chunked,pallas")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  results = []
  for impl in args.impls.split(","):
    # Each implementation in a fresh process would isolate peak memory better; here the peak
    # counter is cumulative, so run the expected-smallest first.
    results.append(run_one(impl, args))
    r = results[-1]
    print(f"{impl:8s} step {r['step_ms_median']:8.1f} ms  peak {r['peak_bytes'] / 2**30:6.2f} GiB"
          f"  loss(step0) {r['first_step_loss']:.5f}", flush=True)
  payload = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
             "jax": jax.__version__, "args": vars(args), "results": results}
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2)
  return payload


if __name__ == "__main__":
  main()
