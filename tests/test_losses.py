"""mdd.objectives.losses: the CE/GCE entry point against the float64 reference, and the token metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd.objectives import losses
from pallas_kernels.gce import gce_reference

jax.config.update("jax_enable_x64", False)


def _problem(seed=0, n=37, d=16, v=53, k=4):
  """Random inputs with padded (-1) neighbour entries, a zero-weight row and invalid rows."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(v, d)).astype(np.float32) * 0.5
  labels = rng.integers(0, v, size=n).astype(np.int32)
  nbr = np.stack([np.arange(v)] + [rng.integers(0, v, size=v) for _ in range(k - 1)], 1)
  nbr[rng.random((v, k)) < 0.2] = -1
  nbr[:, 0] = np.arange(v)
  nw = rng.random((v, k)).astype(np.float32) + 0.1
  nw[nbr < 0] = 0.0
  nw[3] = 0.0  # Falls back to plain CE.
  labels[:3] = 3
  valid = rng.random(n) > 0.25
  return x, w, labels, nbr.astype(np.int32), nw, valid


@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize("mode,ce_mix", [("soft", 0.0), ("marginal", 0.0), ("soft", 0.3),
                                         ("marginal", 0.7)])
def test_token_loss_matches_float64_reference(impl, mode, ce_mix):
  x, w, labels, nbr, nw, valid = _problem()
  ref_loss, ref_dx, ref_dw = gce_reference(x, w, labels, nbr, nw, mode=mode, ce_mix=ce_mix,
                                           valid=valid)
  kwargs = dict(loss_type="gce", mode=mode, ce_mix=ce_mix, impl=impl)
  if impl == "chunked":
    kwargs["chunk_size"] = 8  # Several chunks and a ragged last one (37 rows).

  def total(x, w):
    return jnp.sum(losses.token_loss(x, w, labels, nbr, nw, valid=valid, **kwargs))

  loss = losses.token_loss(x, w, labels, nbr, nw, valid=valid, **kwargs)
  dx, dw = jax.grad(total, argnums=(0, 1))(x, w)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(loss)[~valid] == 0)
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-5)


def test_grid_shaped_inputs_and_weighted_loss():
  x, w, labels, nbr, nw, _ = _problem(seed=1, n=24)
  weights = np.random.default_rng(2).random(24).astype(np.float32)
  weights[::5] = 0.0
  hidden = x.reshape(2, 3, 4, -1)
  per = losses.token_loss(hidden, w, labels.reshape(2, 3, 4), nbr, nw, impl="chunked")
  assert per.shape == (2, 3, 4)
  ref, _, _ = gce_reference(x, w, labels, nbr, nw, with_grads=False)
  np.testing.assert_allclose(per.reshape(-1), ref, rtol=1e-5, atol=1e-5)
  total = losses.weighted_loss(hidden, w, labels.reshape(2, 3, 4), weights.reshape(2, 3, 4),
                               nbr, nw, impl="xla")
  np.testing.assert_allclose(total, np.sum(weights * ref), rtol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
def test_ce_type_is_plain_cross_entropy(impl):
  x, w, labels, nbr, nw, valid = _problem(seed=3)
  loss = losses.token_loss(x, w, labels, loss_type="ce", valid=valid, impl=impl)
  logits = x.astype(np.float64) @ w.T.astype(np.float64)
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  ce = lse - logits[np.arange(len(labels)), labels]
  np.testing.assert_allclose(loss, np.where(valid, ce, 0.0), rtol=1e-5, atol=1e-5)
  # With the table given, GCE differs from CE (the test above would catch a no-op table).
  gce = losses.token_loss(x, w, labels, nbr, nw, valid=valid, impl=impl)
  assert np.max(np.abs(np.asarray(gce) - np.asarray(loss))) > 1e-2


def test_bad_inputs_raise():
  x, w, labels, nbr, nw, _ = _problem()
  with pytest.raises(ValueError, match="impl"):
    losses.token_loss(x, w, labels, nbr, nw, impl="cuda")
  with pytest.raises(ValueError, match="neighbours"):
    losses.token_loss(x, w, labels, impl="xla")
  with pytest.raises(ValueError, match="pallas"):
    if jax.default_backend() == "cpu":
      losses.token_loss(x, w, labels, nbr, nw, impl="pallas")
  with pytest.raises(ValueError, match="mode"):
    losses.token_loss(x, w, labels, nbr, nw, mode="hard")
  with pytest.raises(ValueError, match="disagree"):
    losses.token_loss(x[:5], w, labels, nbr, nw)


def test_chunked_peak_memory_is_o_chunk_v():
  """Compiled temp memory of loss+grad: xla holds N x V logits, chunked only chunk x V."""
  n, d, v, chunk = 4096, 32, 2048, 128
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(v, d)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
  nbr, nw = losses.identity_table(v)

  def temp_bytes(impl, **kw):
    f = jax.jit(jax.grad(lambda x, w: jnp.sum(losses.token_loss(
        x, w, labels, nbr, nw, impl=impl, **kw)), argnums=(0, 1)))
    return f.lower(x, w).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = n * v * 4
  xla = temp_bytes("xla")
  chunked = temp_bytes("chunked", chunk_size=chunk)
  assert xla >= logits_bytes
  # A few chunk x V buffers plus O(N (D + K)) and O(V D) terms; far below N x V.
  assert chunked < 8 * chunk * v * 4 + 4 * (n * d + v * d) * 4, (chunked, xla)
  assert chunked < logits_bytes / 4


def test_chunked_argmax_and_sampling():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, 7, 16)).astype(np.float32)
  w = rng.normal(size=(50, 16)).astype(np.float32)
  pred = losses.chunked_argmax(x, w, chunk_size=8)
  assert pred.shape == (2, 5, 7)
  np.testing.assert_array_equal(pred, np.argmax(x @ w.T, -1))
  # Gumbel sampling at low temperature is the argmax; at high temperature it is not.
  cold = losses.chunked_argmax(x, w, chunk_size=8, rng=jax.random.key(0), temperature=1e-4)
  np.testing.assert_array_equal(cold, pred)
  hot = losses.chunked_argmax(x, w, chunk_size=8, rng=jax.random.key(0), temperature=100.0)
  assert np.mean(np.asarray(hot) == np.asarray(pred)) < 0.5


def test_metric_sums_match_numpy():
  rng = np.random.default_rng(5)
  n, d, v = 300, 8, 12
  x = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=(v, d)).astype(np.float32)
  pred = np.argmax(x @ w.T, -1)
  # Labels right ~half the time so accuracies are far from 0 and 1.
  labels = np.where(rng.random(n) < 0.5, pred, rng.integers(0, v, n)).astype(np.int32)
  inputs = np.where(rng.random(n) < 0.5, pred, rng.integers(0, v, n)).astype(np.int32)
  masked = rng.random(n) < 0.5
  edited = ~masked & (rng.random(n) < 0.4)
  clean = ~masked & ~edited
  nbr = np.stack([np.arange(v), (np.arange(v) + 1) % v, np.full(v, -1)], 1).astype(np.int32)
  sums = losses.token_metric_sums(x, w, labels, inputs, masked, edited, clean, nbr,
                                  chunk_size=64)
  metrics = {k: float(v) for k, v in losses.summarise(sums).items()}
  in_group = (pred == labels) | (pred == (labels + 1) % v)
  expect = {"masked_acc": np.mean((pred == labels)[masked]),
            "group_acc": np.mean(in_group[masked]),
            "edit_detect": np.mean((pred != inputs)[edited]),
            "edit_correct": np.mean((pred == labels)[edited]),
            "keep_acc": np.mean((pred == inputs)[clean])}
  for k, value in expect.items():
    assert abs(metrics[k] - value) < 1e-6, k
  assert metrics["group_acc"] > metrics["masked_acc"]
