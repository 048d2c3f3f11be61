"""Ceilings that benchmarks compare against (datasheet bf16 rates, a measured GEMM rate), the
ways the benchmarks time a call or a train loop, and how they record a row."""

from __future__ import annotations

import json
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


def time_windows(advance, steps: int, windows: int, warmup: int = 2):
  """Times `advance(i)` (one step; returns a device scalar such as the loss): `warmup` steps,
  then `windows` windows of `steps` steps, synchronising once per window on the scalar.
  Returns (first loss, last loss, seconds per step of each window)."""
  for i in range(warmup):
    first = advance(i)
  first = float(first) if warmup else float("nan")
  times, i = [], warmup
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      last = advance(i)
      i += 1
    last = float(last)  # The sync.
    times.append((time.perf_counter() - start) / steps)
  return first, last, times


def error_text(e: Exception) -> str:
  """A failed row's `error`: the exception's type and first line."""
  return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def write_json(path: str, payload: dict) -> None:
  """Writes the payload so far (after every row: a run cut short keeps what it measured)."""
  if path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(payload, f, indent=2)
