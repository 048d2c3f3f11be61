"""Integer hashing on device arrays, shared by the sampler's counter-based noise
(`mdd.sampling.sampler`) and the hashed-word text encoder (`mdd.models.text`)."""

import jax
import jax.numpy as jnp


def mix32(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)
