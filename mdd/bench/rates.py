"""Ceilings that benchmarks compare against: datasheet bf16 rates and a measured GEMM rate."""

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


def gemm_rate(size: int = 8192, seconds: float = 2.0) -> float:
  """Measured bf16 matmul rate (FLOP/s) of size^3 on random inputs, after warm-up; launches
  are queued and synchronised once per sample so host latency stays out."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(2), (size, size), jnp.bfloat16)
  mm = jax.jit(lambda a, b: a @ b)
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    mm(a, b).block_until_ready()
  reps, samples = 20, []
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(reps):
      out = mm(a, b)
    out.block_until_ready()
    samples.append((time.perf_counter() - start) / reps)
  return 2 * size ** 3 / statistics.median(samples)
