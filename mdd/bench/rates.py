"""Ceilings that benchmarks compare against (datasheet bf16 rates, a measured GEMM rate) and
the two ways the benchmarks time a call."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

# Dense bf16 tensor-core rates from the vendors' datasheets (FLOP/s, no sparsity).
DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "B200": 2250e12}


def datasheet_peak(device_kind: str) -> float | None:
  for name, rate in DATASHEET_BF16.items():
    if name in device_kind:
      return rate
  return None


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` over `repeats` calls after `warmup` calls; `fn` must block
  until its device work is done."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def queued_seconds(fn, reps: int = 20, samples: int = 5) -> float:
  """Seconds per call of `fn()` (which returns a device array without blocking): `reps` calls
  are queued and synchronised once per sample, so the host's per-call sync stays out; the
  median of `samples` such samples."""
  times = []
  for _ in range(samples):
    start = time.perf_counter()
    for _ in range(reps):
      out = fn()
    out.block_until_ready()
    times.append((time.perf_counter() - start) / reps)
  return statistics.median(times)


def gemm_rate(size: int = 8192, seconds: float = 2.0, reps: int = 20) -> float:
  """Measured bf16 matmul rate (FLOP/s) of size^3 on random inputs, after `seconds` of warm-up
  so the clocks are up; launches queued (`queued_seconds`)."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(2), (size, size), jnp.bfloat16)
  mm = jax.jit(lambda a, b: a @ b)
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    mm(a, b).block_until_ready()
  return 2 * size ** 3 / queued_seconds(lambda: mm(a, b), reps)
