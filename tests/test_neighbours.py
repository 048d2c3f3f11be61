"""Neighbour tables: blockwise kNN vs brute force, FSQ lattice neighbours, weights, save/load."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mdd.models import quantizers
from mdd.objectives import neighbours as nb


def test_knn_matches_brute_force_with_ragged_blocks():
  rng = np.random.default_rng(0)
  codebook = rng.normal(size=(203, 8)).astype(np.float32)
  ref_ids, ref_sq = nb.brute_force_knn(codebook, 9)
  for block, query_block, group in ((16, 16, 4), (50, 64, 8), (203, 203, 1), (1000, 100, 64),
                                    (64, 7, 203)):
    ids, sq = nb.knn_neighbours(codebook, 9, block_size=block, query_block_size=query_block,
                                group_size=group)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sq, ref_sq, atol=1e-5)
  assert (ids[:, 0] == np.arange(203)).all()


def test_knn_exact_when_neighbours_crowd_into_one_group():
  # Codes on a circle in index order: each code's neighbours are adjacent ids, i.e. mostly in
  # its own group; the two-stage search must still return all of them.
  angles = np.sort(np.random.default_rng(3).uniform(0, 2 * np.pi, 300))
  codebook = np.stack([np.cos(angles), np.sin(angles)], 1)
  ids, _ = nb.knn_neighbours(codebook, 12, block_size=64, query_block_size=128, group_size=32)
  ref_ids, _ = nb.brute_force_knn(codebook, 12)
  np.testing.assert_array_equal(ids, ref_ids)


def test_knn_pads_when_k_exceeds_vocab():
  codebook = np.random.default_rng(1).normal(size=(5, 4))
  ids, sq = nb.knn_neighbours(codebook, 8, block_size=2)
  assert ids.shape == (5, 8)
  assert (ids[:, 5:] == -1).all() and (sq[:, 5:] == 0).all()
  for row in ids:
    assert sorted(row[:5]) == list(range(5))


def test_vq_table_weights_and_dedup():
  codebook = np.random.default_rng(2).normal(size=(64, 8))
  table = nb.build_vq_table(codebook, k=6, temperature=0.2, self_mass=0.3, block_size=16)
  np.testing.assert_allclose(table.weights.sum(1), 1.0, rtol=1e-5)
  assert (table.neighbours[:, 0] == np.arange(64)).all()
  for row in table.neighbours:
    assert len(set(row[row >= 0])) == (row >= 0).sum()
  # Weights fall with distance and the ground truth carries the extra mass.
  assert (np.diff(table.weights[:, 1:], axis=1) <= 1e-7).all()
  assert (table.weights[:, 0] > 0.3).all()
  ids, sq = nb.brute_force_knn(codebook, 6)
  soft = np.exp(-sq / 0.2) / np.exp(-sq / 0.2).sum(1, keepdims=True)
  np.testing.assert_allclose(table.weights, 0.7 * soft + 0.3 * np.eye(6)[0], rtol=1e-5)


def test_fsq_neighbours_exact():
  levels = (3, 4, 2)
  ids, sq = nb.fsq_neighbours(levels)
  vocab = 24
  assert ids.shape == (vocab, 7)
  codes = quantizers.fsq_codes_from_digits(quantizers.fsq_ids_to_digits(np.arange(vocab), levels),
                                           levels)
  digits = quantizers.fsq_ids_to_digits(np.arange(vocab), levels)
  for v in range(vocab):
    expected = {u for u in range(vocab)
                if np.abs(digits[u] - digits[v]).sum() == 1}
    row = ids[v]
    assert row[0] == v
    assert set(row[1:][row[1:] >= 0]) == expected
    assert (row[1 + len(expected):] == -1).all()
    for u, d2 in zip(row[1:], sq[v, 1:]):
      if u >= 0:
        assert d2 == pytest.approx(float(np.sum((codes[u] - codes[v]) ** 2)))
  table = nb.build_fsq_table(levels, temperature=0.5, self_mass=0.25)
  np.testing.assert_allclose(table.weights.sum(1), 1.0, rtol=1e-5)
  assert (table.weights[ids < 0] == 0).all()


def test_dedupe_rows():
  ids = np.array([[3, 1, 3, -1, 1, 2]])
  sq = np.array([[0, 1, 1, 0, 1, 2]], np.float32)
  out_ids, out_sq = nb.dedupe_rows(ids, sq)
  np.testing.assert_array_equal(out_ids, [[3, 1, 2, -1, -1, -1]])
  np.testing.assert_array_equal(out_sq, [[0, 1, 2, 0, 0, 0]])


def test_save_load_roundtrip(tmp_path):
  table = nb.build_fsq_table((5, 3))
  path = os.path.join(tmp_path, "neighbours.npz")
  nb.save_table(path, table)
  loaded = nb.load_table(path)
  assert loaded.neighbours.dtype == np.int32 and loaded.weights.dtype == np.float32
  np.testing.assert_array_equal(loaded.neighbours, table.neighbours)
  np.testing.assert_array_equal(loaded.weights, table.weights)
  with pytest.raises(FileNotFoundError, match="no neighbour table"):
    nb.load_table(os.path.join(tmp_path, "missing.npz"))


@pytest.mark.slow
def test_vq_table_for_2_pow_18_codes_fits_in_4gb():
  """V = 2^18, K = 32 on CPU: prints time and peak RSS of a fresh process; asserts < 4 GB."""
  script = textwrap.dedent("""
      import json, resource, time
      import numpy as np
      from mdd.objectives import neighbours as nb
      codebook = np.random.default_rng(0).normal(size=(2 ** 18, 8)).astype(np.float32)
      start = time.time()
      table = nb.build_vq_table(codebook, k=32)
      seconds = time.time() - start
      usage = resource.getrusage(resource.RUSAGE_SELF)
      peak_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
      assert table.neighbours.shape == (2 ** 18, 32)
      assert (table.neighbours[:, 0] == np.arange(2 ** 18)).all()
      print(json.dumps({"seconds": seconds, "cpu_seconds_total": cpu,
                        "peak_rss_gb": peak_kb / 2 ** 20}))
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       check=True)
  result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
  print("2^18 neighbour table:", result)
  assert result["peak_rss_gb"] < 4.0
