"""Pretokenization: shards hold every example once, resume after interruption, two processes."""

import glob
import os

import jax
import numpy as np
import pytest

from mdd import workdir as workdir_lib
from mdd.data import loader
from mdd.data import text as text_lib
from mdd.data import token_shards
from mdd.models import tokenizer as tokenizer_lib
from mdd.train import pretokenize
import sampling_fixtures


@pytest.fixture(scope="module")
def setup():
  """A micro tokenizer at random weights (drawn without compiling an init), 11 examples and
  their expected ids."""
  model = tokenizer_lib.Tokenizer(channels=tokenizer_lib.variant_channels("micro", 8),
                                  z_channels=16, vocab_size=64, code_dim=4)
  source = loader.TokenizedSource(
      loader.ShapeGenSource(num_examples=11, seed=3, split="train", resolution=32),
      text_lib.ByteTokenizer(max_len=16))
  params = sampling_fixtures.random_init(model, source[0]["image"][None])
  tokenizer = workdir_lib.TrainedTokenizer(model, params)
  expected = tokenizer.encode(np.stack([source[i]["image"] for i in range(11)]))
  return tokenizer, source, expected


def _check_complete(directory, source, expected, check_get_batch):
  reader = token_shards.TokenShardSource(directory, cache_shards=2)
  assert len(reader) == 11 and reader.token_shape == (4, 4) and reader.vocab_size == 64
  seen = []
  for i in range(len(reader)):
    item = reader[i]
    seen.append(item["index"])
    np.testing.assert_array_equal(item["tokens"], expected[i])
    assert item["tokens"].dtype == np.int32
    assert item["caption"] == source[i]["caption"] and item["metadata"] == source[i]["metadata"]
    np.testing.assert_array_equal(item["text_ids"], source[i]["text_ids"])
  assert seen == list(range(11))  # Every example exactly once, in order.
  with pytest.raises(IndexError):
    reader[11]
  # Batches for the denoiser: numeric fields only, resumable at any step.
  stream = reader.batches(4, 0, seed=1, process_index=0, process_count=1)
  first = [next(stream) for _ in range(3)]
  assert sorted(first[0]) == ["text_ids", "text_len", "text_truncated", "tokens"]
  assert first[0]["tokens"].shape == (4, 4, 4)
  resumed = next(reader.batches(4, 2, seed=1, process_index=0, process_count=1))
  np.testing.assert_array_equal(resumed["tokens"], first[2]["tokens"])
  # The vectorised gather equals stacking items, in the given order, across shards.
  check_get_batch(reader, [10, 0, 4, 4, 7, 2, 9])
  with pytest.raises(IndexError):
    reader.get_batch(np.array([0, 11]))
  return reader


def test_pretokenize_resumes_without_duplicates_or_drops(setup, tmp_path, check_get_batch):
  tokenizer, source, expected = setup
  out = str(tmp_path / "train")
  kwargs = dict(shard_size=3, batch_size=4)
  # "Interrupted" run: two shards, plus a half-written temporary file of a third.
  written = pretokenize.pretokenize_split(tokenizer, source, out, max_shards=2, **kwargs)
  assert written == [0, 1]
  with open(token_shards.shard_path(out, 2) + ".tmp-999.npz", "wb") as f:
    f.write(b"garbage")
  with pytest.raises(ValueError, match="incomplete"):
    token_shards.TokenShardSource(out)
  mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "shard-?????.npz"))}
  assert len(mtimes) == 2
  written = pretokenize.pretokenize_split(tokenizer, source, out, **kwargs)
  assert written == [2, 3]  # Only the missing shards (the last one is partial: 2 examples).
  for path, mtime in mtimes.items():
    assert os.stat(path).st_mtime_ns == mtime  # Finished shards are not redone.
  assert not glob.glob(os.path.join(out, "*.tmp-*"))
  _check_complete(out, source, expected, check_get_batch)
  # A third run does nothing; a different shard size is refused.
  assert pretokenize.pretokenize_split(tokenizer, source, out, **kwargs) == []
  with pytest.raises(ValueError, match="another setting"):
    pretokenize.pretokenize_split(tokenizer, source, out, shard_size=4, batch_size=4)


def test_pretokenize_two_processes_split_the_shards(setup, tmp_path, check_get_batch):
  tokenizer, source, expected = setup
  out = str(tmp_path / "train")
  kwargs = dict(shard_size=2, batch_size=4, process_count=2)
  first = pretokenize.pretokenize_split(tokenizer, source, out, process_index=0, **kwargs)
  second = pretokenize.pretokenize_split(tokenizer, source, out, process_index=1, **kwargs)
  assert first == [0, 2, 4] and second == [1, 3, 5]
  _check_complete(out, source, expected, check_get_batch)
  # The split= form used by the denoiser.
  assert len(token_shards.TokenShardSource(str(tmp_path), split="train")) == 11


def test_missing_token_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="pretokenize"):
    token_shards.TokenShardSource(str(tmp_path))
