"""The WordPiece tokenizer of BERT models (MiniLM), read from `tokenizer.json` or `vocab.txt`.

Pure Python, so the `minilm` encoder needs no tokenizer package; its ids match Hugging Face's
BERT uncased tokenisation (tests/test_text_encoders.py checks them against golden ids).
"""

from __future__ import annotations

import json
import os
import unicodedata
from typing import Sequence

import numpy as np


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
