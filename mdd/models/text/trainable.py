"""The trainable text encoders, `byte` and `word`: small Transformers trained with the denoiser.

Both run inside the train step on the batches' byte ids (`mdd.data.text`: `text_ids [B, T]` +
`text_len [B]`) and return (features [B, S, width], mask [B, S]).

- `byte`: a pre-norm Transformer over the UTF-8 byte ids themselves (S = T).
- `word`: the same byte ids, pooled on the device into hashed words (the hashing trick: each
  word's bytes -> a 32-bit polynomial hash -> one of `num_buckets` embeddings) and a small
  Transformer over at most `max_words` words (S = max_words). No vocabulary file; every path
  that feeds byte ids (training, sampling, evaluation) gets the same words. A model sees whole
  words from the first step and the sequence is ~4x shorter than in bytes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd.data import text as text_lib
from mdd.models import layers
from mdd.utils import hashing


# --------------------------------------------------------------------------------------------
# byte, and the embedding + Transformer stack that both encoders share.


class TrainableTextEncoder(nn.Module):
  """The size and dtypes shared by the trainable encoders; `__call__(ids, mask)` returns
  (features [B, S, width], mask [B, S])."""
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 384
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32


class ByteEncoder(TrainableTextEncoder):
  """A small pre-norm Transformer over UTF-8 byte ids (RoPE positions along the text)."""

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ids int [B, T] (`mdd.data.text` byte ids), mask bool [B, T] -> ([B, T, width], mask)."""
    mask = mask.astype(bool)
    return _embed_and_encode(self, ids, mask, text_lib.VOCAB_SIZE, "byte_embed"), mask


def _embed_and_encode(module: TrainableTextEncoder, ids: jax.Array, mask: jax.Array,
                      vocab: int, embed_name: str) -> jax.Array:
  """Embedding + `depth` pre-norm blocks (1-D RoPE) + final norm, inside `module`'s scope."""
  kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  emb_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed"))
  x = layers.Embed(vocab, module.width, embedding_init=emb_init, name=embed_name, **kw)(ids)
  steps = jnp.arange(ids.shape[1], dtype=jnp.float32)
  positions = jnp.stack([steps, steps], axis=-1)  # 1-D text: both RoPE halves follow t.
  for i in range(module.depth):
    x = layers.TransformerBlock(num_heads=module.num_heads,
                                head_dim=module.width // module.num_heads,
                                mlp_dim=module.mlp_dim, name=f"block_{i}", **kw)(
                                    x, positions, self_mask=mask)
  return layers.RMSNorm(name="final_norm", **kw)(x)


# --------------------------------------------------------------------------------------------
# word: trainable, hashed words pooled from the byte ids on the device.

WORD_PAD_ID, WORD_END_ID = 0, 1  # Bucket b of a word is id b + 2.
_HASH_BASE = 0x01000193          # Odd multiplier of the polynomial hash (mod 2^32).


def _is_word_byte(byte: jax.Array) -> jax.Array:
  """ASCII letters and digits, and every byte >= 128 (so UTF-8 letters stay inside words)."""
  return (((byte >= ord("a")) & (byte <= ord("z"))) | ((byte >= ord("A")) & (byte <= ord("Z")))
          | ((byte >= ord("0")) & (byte <= ord("9"))) | (byte >= 128))


def word_ids(ids: jax.Array, mask: jax.Array, num_buckets: int,
             max_words: int) -> tuple[jax.Array, jax.Array]:
  """Byte ids [B, T] (+ mask) -> (word ids int32 [B, max_words], word mask bool [B, max_words]).

  A word is a maximal run of letters/digits (ASCII letters lower-cased; bytes >= 128 count as
  letters); anything else separates words. Word `w` of a text gets id
  `2 + mix(sum_j (byte_j + 1) * BASE^j) % num_buckets` (j = byte position within the word,
  arithmetic mod 2^32), the first `max_words - 1` words are kept, and an end id follows them, so
  an empty text (the unconditional prompt) still has one real token.
  """
  batch, length = ids.shape
  byte = ids.astype(jnp.int32) - 2  # mdd.data.text: byte b is id b + 2; pad/end become < 0.
  inside = mask.astype(bool) & (byte >= 0) & _is_word_byte(jnp.maximum(byte, 0))
  byte = jnp.where((byte >= ord("A")) & (byte <= ord("Z")), byte + 32, byte)
  previous = jnp.pad(inside[:, :-1], ((0, 0), (1, 0)))
  start = inside & ~previous
  word = jnp.cumsum(start, axis=1) - 1                         # word index of each byte
  position = jnp.arange(length)[None, :]
  first = jax.lax.cummax(jnp.where(start, position, 0), axis=1)
  powers = jnp.asarray(np.array([pow(_HASH_BASE, k, 2 ** 32) for k in range(length)],
                                np.uint32))
  terms = jnp.where(inside, (byte + 1).astype(jnp.uint32) * powers[position - first],
                    jnp.uint32(0))
  keep = inside & (word < max_words - 1)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, length))
  hashes = jnp.zeros((batch, max_words), jnp.uint32).at[
      rows, jnp.where(keep, word, max_words)].add(terms, mode="drop")
  count = jnp.minimum(jnp.sum(start, axis=1), max_words - 1)  # [B]
  slots = jnp.arange(max_words)[None, :]
  # The avalanche mix sends nearby hashes to unrelated buckets.
  out = (2 + hashing.mix32(hashes) % jnp.uint32(num_buckets)).astype(jnp.int32)
  out = jnp.where(slots < count[:, None], out, WORD_PAD_ID)
  out = jnp.where(slots == count[:, None], WORD_END_ID, out)
  return out, slots <= count[:, None]


class WordEncoder(TrainableTextEncoder):
  """A small pre-norm Transformer over hashed words pooled from byte ids (see `word_ids`)."""
  num_buckets: int = 4096
  max_words: int = 16

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ids int [B, T] byte ids, mask bool [B, T] -> ([B, max_words, width], word mask)."""
    words, word_mask = word_ids(ids, mask, self.num_buckets, self.max_words)
    return (_embed_and_encode(self, words, word_mask, self.num_buckets + 2, "word_embed"),
            word_mask)


# --------------------------------------------------------------------------------------------
# The builder of text.kind `byte` / `word`.


def build(cfg) -> TrainableTextEncoder:
  """`byte` / `word`: a small Transformer trained with the denoiser (runs inside the step)."""
  if cfg.width % cfg.num_heads or (cfg.width // cfg.num_heads) % 4:
    raise ValueError(f"text.width={cfg.width} / num_heads={cfg.num_heads} must give a head "
                     "dim divisible by 4")
  size = dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
  if cfg.kind == "byte":
    return ByteEncoder(**size)
  num_buckets, max_words = int(cfg.get("num_buckets", 4096)), int(cfg.get("max_words", 16))
  if num_buckets < 1 or max_words < 2:
    raise ValueError(f"text.num_buckets={num_buckets} must be >= 1 and text.max_words="
                     f"{max_words} >= 2 (the words and the end token)")
  return WordEncoder(num_buckets=num_buckets, max_words=max_words, **size)
