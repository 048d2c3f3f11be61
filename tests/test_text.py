"""Byte-level tokenizer: round trip, padding, end marker, truncation counting."""

from absl import logging
import ml_collections
import numpy as np
import pytest

from mdd import defaults
from mdd.data import text


def _random_text(rng, max_chars):
  alphabet = list("abcdefghijklmnopqrstuvwxyz ,.0123456789") + ["é", "ß", "日", "🙂"]
  return "".join(rng.choice(alphabet, size=int(rng.integers(0, max_chars))))


def test_round_trip_padding_and_lengths():
  rng = np.random.default_rng(0)
  tokenizer = text.ByteTokenizer(max_len=64)
  for _ in range(200):
    caption = _random_text(rng, 14)  # <= 14 chars * 4 bytes = 56 bytes: never truncated.
    ids, length, truncated = tokenizer.encode(caption)
    data = caption.encode("utf-8")
    assert ids.dtype == np.int32 and ids.shape == (64,) and not truncated
    assert length == len(data) + 1 and ids[length - 1] == text.EOS_ID
    np.testing.assert_array_equal(ids[:len(data)], np.frombuffer(data, np.uint8) + 2)
    assert np.all(ids[length:] == text.PAD_ID)
    assert tokenizer.decode(ids) == caption
  assert tokenizer.vocab_size == 258
  assert tokenizer.stats() == {"num_encoded": 200, "num_truncated": 0, "truncated_fraction": 0.0}


def test_empty_text_has_end_marker_and_no_eos_variant():
  ids, length, _ = text.ByteTokenizer(max_len=4).encode("")
  assert length == 1 and ids.tolist() == [text.EOS_ID, 0, 0, 0]
  ids, length, _ = text.ByteTokenizer(max_len=4, append_eos=False).encode("ab")
  assert length == 2 and ids.tolist() == [ord("a") + 2, ord("b") + 2, 0, 0]


def test_truncation_is_counted_and_reported(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda *args: warnings.append(args))
  tokenizer = text.ByteTokenizer(max_len=8)
  batch = tokenizer.encode_batch(["a red circle", "short", "two blue squares", "1234567"])
  np.testing.assert_array_equal(batch["text_truncated"], [True, False, True, False])
  np.testing.assert_array_equal(batch["text_len"], [8, 6, 8, 8])
  assert batch["text_ids"].shape == (4, 8) and batch["text_ids"].dtype == np.int32
  assert tokenizer.decode(batch["text_ids"][0]) == "a red c"  # 7 bytes + end marker
  assert batch["text_ids"][0, -1] == text.EOS_ID
  stats = tokenizer.stats()
  assert stats["num_truncated"] == 2 and stats["num_encoded"] == 4
  assert stats["truncated_fraction"] == 0.5
  assert len(warnings) == 1  # Reported once, counted always.


def test_bad_config_and_from_config():
  with pytest.raises(ValueError, match="max_len"):
    text.ByteTokenizer(max_len=1)
  cfg = defaults.data_config()
  cfg.max_text_len = 16
  tokenizer = text.byte_tokenizer_from_config(cfg)
  assert tokenizer.max_len == 16 and tokenizer.append_eos
  cfg = ml_collections.ConfigDict({"max_text_len": 5})
  assert text.byte_tokenizer_from_config(cfg).max_len == 5
