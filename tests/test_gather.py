"""take_rows / segment_sum_sorted / count_ids against the scatter-based references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd.models import gather

# Jitted as in the models: one compile instead of op-by-op dispatch of every scan level.
_segment_sum_sorted = jax.jit(gather.segment_sum_sorted, static_argnums=2)
_count_ids = jax.jit(gather.count_ids, static_argnums=1)


def _skewed_ids(rng, n, vocab):
  ids = rng.integers(0, vocab, size=n)
  ids[rng.random(n) < 0.7] = 3  # one hot code, as a VQ tokenizer's background
  return ids


@pytest.mark.parametrize("n,vocab,width", [(1000, 60, 8), (37, 5, 3), (1, 4, 2)])
def test_segment_sum_sorted_matches_segment_sum(n, vocab, width):
  rng = np.random.default_rng(n)
  ids = _skewed_ids(rng, n, vocab)
  if n > 2:
    ids[0], ids[1] = -1, vocab + 2  # out of range: dropped, as by segment_sum
  values = jnp.asarray(rng.normal(size=(n, width)), jnp.float32)
  ids = jnp.asarray(ids, jnp.int32)
  want = jax.ops.segment_sum(values, ids, num_segments=vocab)
  got = _segment_sum_sorted(values, ids, vocab)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_segment_sum_sorted_sums_bfloat16_in_float32():
  rng = np.random.default_rng(0)
  ids = jnp.zeros((4096,), jnp.int32)
  values = jnp.asarray(rng.uniform(0.5, 1.5, size=(4096, 2)), jnp.bfloat16)
  exact = np.sum(np.asarray(values, np.float64), axis=0)
  got = np.asarray(_segment_sum_sorted(values, ids, 2)[0], np.float64)
  np.testing.assert_allclose(got, exact, rtol=1e-2)  # bfloat16 output rounding only


def test_segment_sum_sorted_rejects_bad_shapes():
  with pytest.raises(ValueError, match="need values"):
    gather.segment_sum_sorted(jnp.zeros((4, 2)), jnp.zeros((3,), jnp.int32), 5)


def test_count_ids_matches_bincount():
  rng = np.random.default_rng(1)
  ids = _skewed_ids(rng, 500, 40).reshape(5, 10, 10)
  got = _count_ids(jnp.asarray(ids, jnp.int32), 40)
  np.testing.assert_array_equal(np.asarray(got), np.bincount(ids.ravel(), minlength=40))


def test_take_rows_value_and_gradient_match_take_without_a_scatter():
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
  ids = jnp.asarray(_skewed_ids(rng, 6 * 30, 50).reshape(6, 30), jnp.int32)
  weights = jnp.asarray(rng.normal(size=(6, 30, 8)), jnp.float32)
  loss = lambda take: lambda t: jnp.sum(jnp.sin(take(t, ids)) * weights)
  np.testing.assert_array_equal(np.asarray(gather.take_rows(table, ids)),
                                np.asarray(jnp.take(table, ids, axis=0)))
  grad = jax.jit(jax.grad(loss(gather.take_rows)))
  got = grad(table)
  want = jax.jit(jax.grad(loss(lambda t, i: jnp.take(t, i, axis=0))))(table)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  hlo = grad.lower(table).as_text()
  assert "stablehlo.scatter" not in hlo
