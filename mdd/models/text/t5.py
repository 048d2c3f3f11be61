"""A T5 encoder in Flax, loaded from a Hugging Face folder, and its tokenizer.

T5 v1.0 (ReLU feed-forward) or v1.1 (gated-GELU): RMS norms without bias, unscaled attention and
a bucketed relative position bias. The folder holds `config.json` + `*.safetensors`; its
`tokenizer.json` (SentencePiece/Unigram) needs the optional `tokenizers` package, imported only
when a T5 tokenizer is built (callers that pass ids need none).
"""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd.models.text import weights as weights_lib


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
  cfg = weights_lib.read_config(folder)
  weights = weights_lib.load_safetensors(folder)
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


class HFTokenizer:
  """T5's SentencePiece (Unigram) `tokenizer.json`, through the optional `tokenizers` package.

  `batch` gives what Hugging Face's T5 tokenizer gives with `truncation=True,
  padding="max_length", max_length=max_len`: the pieces of the text cut to `max_len - 1`, then
  `</s>` (so a truncated text still ends with EOS), then `<pad>` up to `max_len`. EOS is appended
  here, not by the file's post-processor, so a `tokenizer.json` without one behaves the same.
  """

  def __init__(self, folder: str):
    try:
      import tokenizers  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("the t5 text encoder needs the `tokenizers` package "
                        "(pip install tokenizers)") from e
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"no tokenizer.json in {folder}")
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.no_padding()
    self._tok.no_truncation()
    self.eos_id = self._tok.token_to_id("</s>")
    if self.eos_id is None:
      raise ValueError(f"{path}: no </s> token; not a T5 tokenizer")
    pad_id = self._tok.token_to_id("<pad>")
    self.pad_id = 0 if pad_id is None else pad_id

  def encode(self, text: str, max_len: int) -> list[int]:
    """The ids of `text`: pieces (at most `max_len - 1`) and `</s>`; no padding."""
    return self._truncate(self._tok.encode(text, add_special_tokens=False).ids, max_len)

  def _truncate(self, ids: list[int], max_len: int) -> list[int]:
    if max_len < 1:
      raise ValueError(f"max_len must be >= 1 (room for </s>), got {max_len}")
    return list(ids[:max_len - 1]) + [self.eos_id]

  def batch(self, texts, max_len):
    """(ids int32 [B, max_len] padded with `<pad>`; mask bool [B, max_len])."""
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    for i, enc in enumerate(encodings):
      row = self._truncate(enc.ids, max_len)
      ids[i, :len(row)] = row
      mask[i, :len(row)] = True
    return ids, mask
