"""Per-sample random numbers of the sampler: counter-based hashes of (seed, step, row, column).

Noise: JAX's threefry gives each sample a 64-bit seed (`fold_in(rng, sample_index)`, outside the
scan); a counter-based hash expands it per step. Threefry over a [L, V] shape compiles slowly on
CPU (a vmapped [20, 10] draw took 4.1 s vs 0.6 s for two words, measured here, and each threefry
call site in the scan body costs that again) and runs ~20 rounds per number on accelerators; the
hash is a few integer ops. Every value depends only on (seed, step, row, column), so it does
not change with batch size, position in the batch or sharding.

"""

import jax
import jax.numpy as jnp

from mdd.utils import hashing


def step_seed(seeds: jax.Array, step: jax.Array) -> jax.Array:
  """uint32 [..., 2] per-sample seeds -> the seeds of scan step `step` (distinct per step)."""
  step = jnp.asarray(step, jnp.uint32)
  first = hashing.mix32(seeds[..., 0] + step * jnp.uint32(0x9E3779B9))
  second = hashing.mix32(seeds[..., 1] ^ hashing.mix32(step + jnp.uint32(0x7F4A7C15)))
  return jnp.stack([first, second], axis=-1)


def counter_uniform(seed: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """float32 `shape` uniforms in (0, 1) from a uint32 [2] seed; bijective in row and column."""
  rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  cols = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
  h = hashing.mix32(rows * jnp.uint32(0x9E3779B9) ^ seed[0])
  h = hashing.mix32((h ^ seed[1]) + cols * jnp.uint32(0x27D4EB2F))
  h = hashing.mix32(h + seed[0] * jnp.uint32(0x165667B1))
  # 24 bits, centred in their bin, so neither 0 nor 1 is ever produced (Gumbel needs log(-log u)).
  return ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))
