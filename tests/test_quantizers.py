"""Quantizers: blockwise lookup == dense lookup, straight-through gradients, FSQ, restarts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd.models import quantizers


def _normal(seed, shape):
  """Standard normal float32 inputs drawn with NumPy (an eager jax.random draw compiles a
  sampler per shape, seconds each on CPU)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("vocab,block", [(1000, 128), (1000, 1000), (1000, 4096), (257, 7)])
def test_blockwise_lookup_equals_dense(vocab, block):
  queries = quantizers.l2_normalize(_normal(vocab + block, (300, 8)))
  codebook = quantizers.l2_normalize(_normal(vocab + block + 1, (vocab, 8)))
  ids, sims = quantizers.blockwise_nearest(queries, codebook, block)
  np.testing.assert_array_equal(ids, quantizers.dense_nearest(queries, codebook))
  np.testing.assert_allclose(sims, jnp.max(queries @ codebook.T, axis=1), rtol=1e-5)


def test_blockwise_lookup_ties_go_to_lowest_index():
  codebook = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
  ids, _ = quantizers.blockwise_nearest(jnp.asarray([[1.0, 0.0]]), codebook, block_size=2)
  assert int(ids[0]) == 0


def test_blockwise_lookup_rejects_bad_shapes():
  with pytest.raises(ValueError, match="queries"):
    quantizers.blockwise_nearest(jnp.ones((3, 4)), jnp.ones((5, 3)))


def _vq(vocab=64, block=16, **kw):
  return quantizers.VectorQuantizer(vocab_size=vocab, code_dim=4, out_features=6,
                                    lookup_block_size=block, **kw)


def test_vq_forward_matches_codes_and_losses():
  vq = _vq()
  z = _normal(0, (2, 3, 5, 12))
  params = vq.init(jax.random.key(1), z)
  out, aux = vq.apply(params, z)
  assert out.shape == (2, 3, 5, 6) and aux["ids"].shape == (2, 3, 5)
  assert aux["ids"].dtype == jnp.int32
  enc = vq.apply(params, z, method=vq.project)
  codebook = vq.apply(params, method=vq.codebook)
  np.testing.assert_array_equal(aux["ids"], quantizers.dense_nearest(enc.reshape(-1, 4),
                                                                     codebook).reshape(2, 3, 5))
  np.testing.assert_allclose(out, vq.apply(params, aux["ids"], method=vq.embed), atol=1e-5)
  np.testing.assert_array_equal(vq.apply(params, z, method=vq.encode), aux["ids"])
  expected = jnp.mean(jnp.square(enc - codebook[aux["ids"]]))
  np.testing.assert_allclose(aux["commitment_loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(aux["loss"], 1.25 * expected, rtol=1e-5)


def test_straight_through_gradients_reach_encoder_and_codebook():
  """The encoder gets the unquantized gradient; the codebook and in_proj get non-zero ones.

  The three gradients are jitted: the same math, one compile each instead of op-by-op."""
  vq = _vq(entropy_weight=0.1)
  z = _normal(2, (2, 4, 4, 12))
  params = jax.jit(vq.init)(jax.random.key(3), z)
  target = _normal(4, (2, 4, 4, 6))

  def out_loss(z_in):
    out, _ = vq.apply(params, z_in)
    return jnp.sum(out * target)

  grad_z = jax.jit(jax.grad(out_loss))(z)
  assert float(jnp.abs(grad_z).min()) >= 0 and float(jnp.abs(grad_z).max()) > 1e-4
  # Straight-through: d out / d enc is the identity, so the gradient w.r.t. z equals the one
  # of out_proj(project(z)) with no quantization at all.
  def unquantized(z_in):
    enc = vq.apply(params, z_in, method=vq.project)
    out = vq.apply(params, enc, method=lambda m, e: m.out_proj(e))
    return jnp.sum(out * target)
  np.testing.assert_allclose(grad_z, jax.jit(jax.grad(unquantized))(z), rtol=1e-4, atol=1e-6)

  def total_loss(p):
    out, aux = vq.apply(p, z)
    return jnp.sum(out * target) + aux["loss"]
  grads = jax.jit(jax.grad(total_loss))(params)["params"]
  codebook_grad = grads["codebook"].value if hasattr(grads["codebook"], "value") else grads[
      "codebook"]
  assert float(jnp.abs(codebook_grad).max()) > 0  # Codebook loss and entropy reach the codes.
  assert float(jnp.abs(jax.tree.leaves(grads["in_proj"])[0]).max()) > 0


def test_restart_moves_only_dead_codes():
  codebook = _normal(5, (10, 4))
  usage = jnp.asarray([5.0, 0.0, 3.0, 0.01, 2.0, 2.0, 0.0, 9.0, 1.0, 1.0])
  encodings = quantizers.l2_normalize(_normal(6, (7, 4)))
  priority = jnp.asarray([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
  new, new_usage, dead = jax.jit(quantizers.restart_dead_codes)(
      codebook, usage, encodings, jax.random.key(7), 0.5, priority)
  np.testing.assert_array_equal(dead, usage < 0.5)
  np.testing.assert_array_equal(new[~dead], codebook[~dead])
  # With all priority on encoding 3, every restarted code points (up to jitter) at it.
  cos = quantizers.l2_normalize(new[dead]) @ encodings[3]
  assert (cos > 0.99).all()
  assert (new_usage[dead] == 1.0).all() and (new_usage[~dead] == usage[~dead]).all()


def test_usage_counts_and_perplexity():
  counts = quantizers.code_usage_counts(jnp.asarray([[0, 1], [1, 3]]), 5)
  np.testing.assert_array_equal(counts, [1, 2, 0, 1, 0])
  np.testing.assert_allclose(quantizers.perplexity(jnp.asarray([1.0, 1.0, 1.0, 1.0])), 4.0,
                             rtol=1e-5)
  np.testing.assert_allclose(quantizers.perplexity(counts), np.exp(-(0.5 * np.log(0.5) +
                                                                     0.5 * np.log(0.25))),
                             rtol=1e-5)


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4), (8,) * 6])
def test_fsq_ids_digits_codes_roundtrip(levels):
  vocab = int(np.prod(levels))
  ids = np.random.default_rng(0).integers(0, vocab, 500)
  digits = quantizers.fsq_ids_to_digits(ids, levels)
  np.testing.assert_array_equal(quantizers.fsq_digits_to_ids(digits, levels), ids)
  codes = quantizers.fsq_codes_from_digits(digits, levels)
  assert codes.min() >= -1 and codes.max() <= 1


def test_fsq_quantizes_onto_the_lattice_with_straight_through():
  levels = (8, 5, 3)
  fsq = quantizers.FiniteScalarQuantizer(levels, out_features=4)
  z = 3 * _normal(8, (2, 8, 8, 10))  # 128 tokens: enough to reach every level.
  params = fsq.init(jax.random.key(9), z)
  assert fsq.vocab_size == 120
  out, aux = fsq.apply(params, z)
  ids = aux["ids"]
  assert ids.min() >= 0 and ids.max() < 120
  codebook = fsq.apply(params, method=fsq.codebook)
  assert codebook.shape == (120, 3)
  np.testing.assert_allclose(aux["encodings"].reshape(-1, 3), codebook[ids.reshape(-1)],
                             atol=1e-6)
  np.testing.assert_allclose(out, fsq.apply(params, ids, method=fsq.embed), atol=1e-5)
  # Every dimension uses all its levels on wide inputs.
  digits = quantizers.fsq_ids_to_digits(np.asarray(ids).reshape(-1), levels)
  for dim, level in enumerate(levels):
    assert set(np.unique(digits[:, dim])) == set(range(level))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(fsq.apply(params, x)[0])))(z)
  assert float(jnp.abs(grad).max()) > 1e-4


def test_fsq_rejects_bad_levels():
  fsq = quantizers.FiniteScalarQuantizer((4, 1), out_features=2)
  with pytest.raises(ValueError, match="level"):
    fsq.init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))
