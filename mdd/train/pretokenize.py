r"""Pretokenization: encode a dataset split into token shards once, read them by index later.

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=DIR --config.mode=pretokenize

Writes DIR/tokens/<split>/ in the layout of `mdd.data.token_shards`: text (`caption`, `tag`,
`metadata` as a JSON string) as unicode arrays, numbers (`text_ids`, `text_len`, ... from the
tokenized-caption source) as they are.

Resumable and multi-process safe by construction: shards have fixed contents, process p of P
writes the shards s with s % P == p, and each shard is written atomically (`fileio.save_npz`: a
temporary file renamed into place locally, one upload on an object store), so a shard either
exists complete or not at all. A rerun skips existing shards, so an interrupted run neither
duplicates nor drops examples. DIR may be a `gs://` URL.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Sequence

import jax
import numpy as np

from mdd import workdir as workdir_lib
from mdd.data import loader
from mdd.data.token_shards import FORMAT_VERSION, MANIFEST, shard_path
from mdd.utils import fileio

def _check_or_write_manifest(directory: str, manifest: dict):
  path = os.path.join(directory, MANIFEST)
  if fileio.exists(path):
    existing = fileio.read_json(path, fix=f"delete {directory} and rerun the pretokenize stage")
    keys = ("num_examples", "shard_size", "num_shards", "token_shape", "vocab_size")
    changed = {k: (existing.get(k), manifest[k]) for k in keys if existing.get(k) != manifest[k]}
    if changed:
      raise ValueError(f"{directory} holds token shards of another setting {changed} "
                       "(old, new); delete the folder or pick another workdir")
    return
  fileio.write_json_atomic(path, manifest)


def pretokenize_split(tokenizer, source, out_dir: str, *, shard_size: int = 1024,
                      batch_size: int = 64, process_index: int = 0, process_count: int = 1,
                      max_shards: int | None = None) -> list[int]:
  """Encodes `source` into shards under `out_dir`; returns the shard numbers written now.

  Args:
    tokenizer: a `mdd.workdir.TrainedTokenizer` (encode, downsample_factor, num_codes).
    source: random-access source of dicts with `image` uint8 [H, W, 3] and optionally
      `caption`, `tag`, `metadata`.
    out_dir: the split's token folder.
    shard_size: examples per shard (fixed: it defines which examples a shard holds).
    batch_size: images per encoder call (the last one is padded, so one compile serves all).
    process_index, process_count: this process writes shards s with s % count == index.
    max_shards: stop after writing this many shards (None = all); lets tests interrupt a run.
  """
  if shard_size < 1 or batch_size < 1:
    raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  num_examples = len(source)
  if num_examples < 1:
    raise ValueError("pretokenize: the source is empty")
  first = np.asarray(source[0]["image"])
  f = tokenizer.downsample_factor
  token_shape = [first.shape[0] // f, first.shape[1] // f]
  num_shards = -(-num_examples // shard_size)
  fileio.makedirs(out_dir)
  _check_or_write_manifest(out_dir, {
      "version": FORMAT_VERSION, "num_examples": num_examples, "shard_size": shard_size,
      "num_shards": num_shards, "token_shape": token_shape, "vocab_size": tokenizer.num_codes,
      "image_shape": list(first.shape)})
  # Temporary files of this process slot's earlier, interrupted run are garbage (the shard is
  # redone). Other slots' files are left alone: their writers may still be running.
  names = fileio.listdir(out_dir)
  for stale in fnmatch.filter(names, "shard-*.npz.tmp-*"):
    shard = int(stale[len("shard-"):len("shard-") + 5])
    if shard % process_count == process_index:
      fileio.remove(os.path.join(out_dir, stale))
  written = []
  for shard in range(process_index, num_shards, process_count):
    path = shard_path(out_dir, shard)
    if os.path.basename(path) in names:
      continue
    if max_shards is not None and len(written) >= max_shards:
      break
    indices = np.arange(shard * shard_size, min((shard + 1) * shard_size, num_examples))
    examples = [source[int(i)] for i in indices]
    images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
    ids = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      real = len(chunk)
      if real < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, 0)])
      ids.append(tokenizer.encode(chunk)[:real])
    fields = {"tokens": np.concatenate(ids).astype(np.int32), "index": indices.astype(np.int64)}
    for key in ("caption", "tag", "metadata"):
      fields[key] = np.asarray([str(e.get(key, "")) for e in examples], dtype=np.str_)
    for key, value in examples[0].items():
      if key not in fields and key != "image":
        values = [e[key] for e in examples]
        fields[key] = (np.asarray([str(v) for v in values], dtype=np.str_)
                       if isinstance(value, (str, bytes)) else np.stack(values))
    fileio.save_npz(path, **fields)
    written.append(shard)
    logging.info("pretokenize: wrote %s (%d examples)", path, len(indices))
  return written


def run(config, workdir: str, splits: Sequence[str] | None = None) -> None:
  """`--config.mode=pretokenize`: encodes `config.tokenizer.pretokenize.splits` with the
  trained tokenizer in DIR/tokenizer into DIR/tokens/<split>."""
  run_dir = workdir_lib.Workdir(workdir)
  tokenizer = run_dir.load_tokenizer()
  cfg = config.tokenizer.pretokenize
  for split in list(splits or cfg.splits):
    source = loader.make_source(config.data, split)
    pretokenize_split(tokenizer, source, run_dir.tokens_dir(split),
                      shard_size=int(cfg.shard_size), batch_size=int(cfg.batch_size),
                      process_index=jax.process_index(), process_count=jax.process_count())
