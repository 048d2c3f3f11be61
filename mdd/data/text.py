"""Byte-level text tokenizer with a fixed maximum length.

Token ids: 0 is padding, 1 marks the end of the text (so even an empty caption, e.g. the
unconditional prompt of classifier-free guidance, has one real token to attend to), and UTF-8
byte `b` is `b + 2`; the vocabulary has 258 ids. Text longer than `max_len` is cut at the byte
level; each cut is counted (and logged once) so a run can report how many captions lost words.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Sequence

from absl import logging
import numpy as np

from mdd.utils import pickling

PAD_ID = 0
EOS_ID = 1
_BYTE_OFFSET = 2
VOCAB_SIZE = 256 + _BYTE_OFFSET


@dataclasses.dataclass
class ByteTokenizer(pickling.FreshLockOnUnpickle):
  """UTF-8 bytes -> int32 ids of fixed length `max_len` (pad 0); counts truncations.

  Attributes:
    max_len: tokens per text, including the end marker when `append_eos`.
    append_eos: end every text with `EOS_ID` (kept even when the text is cut).
  """
  max_len: int = 64
  append_eos: bool = True
  num_encoded: int = dataclasses.field(default=0, init=False)
  num_truncated: int = dataclasses.field(default=0, init=False)

  def __post_init__(self):
    if self.max_len < 1 + int(self.append_eos):
      raise ValueError(f"text max_len must be >= {1 + int(self.append_eos)}, got {self.max_len}")
    # Sources may tokenize from several loader threads.
    self._lock = threading.Lock()

  @property
  def vocab_size(self) -> int:
    return VOCAB_SIZE

  def encode(self, text: str | bytes) -> tuple[np.ndarray, int, bool]:
    """Returns (ids int32 [max_len], length, truncated) for one text."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    room = self.max_len - int(self.append_eos)
    truncated = len(data) > room
    data = data[:room]
    ids = np.zeros(self.max_len, np.int32)
    ids[:len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + _BYTE_OFFSET
    length = len(data)
    if self.append_eos:
      ids[length] = EOS_ID
      length += 1
    with self._lock:
      self.num_encoded += 1
      if truncated:
        self.num_truncated += 1
        first = self.num_truncated == 1
    if truncated and first:
      logging.warning("Text longer than max_len=%d bytes is truncated (first: %r); "
                      "see ByteTokenizer.stats() for the count.", self.max_len, text)
    return ids, length, truncated

  def encode_batch(self, texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
    """{"text_ids" int32 [B, max_len], "text_len" int32 [B], "text_truncated" bool [B]}."""
    encoded = [self.encode(t) for t in texts]
    return {"text_ids": np.stack([e[0] for e in encoded]).reshape(len(texts), self.max_len),
            "text_len": np.array([e[1] for e in encoded], np.int32),
            "text_truncated": np.array([e[2] for e in encoded], bool)}

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Inverse of `encode` up to the first pad or end marker (cut UTF-8 is replaced)."""
    out = bytearray()
    for token in np.asarray(ids).tolist():
      if token in (PAD_ID, EOS_ID):
        break
      out.append(token - _BYTE_OFFSET)
    return out.decode("utf-8", errors="replace")

  def stats(self) -> dict[str, float]:
    """Counts so far: {"num_encoded", "num_truncated", "truncated_fraction"}."""
    with self._lock:
      return {"num_encoded": self.num_encoded, "num_truncated": self.num_truncated,
              "truncated_fraction": self.num_truncated / max(self.num_encoded, 1)}


def byte_tokenizer_from_config(data_cfg) -> ByteTokenizer:
  """The one place a data config section builds the text tokenizer."""
  return ByteTokenizer(max_len=int(data_cfg.max_text_len),
                       append_eos=bool(data_cfg.get("append_eos", True)))
