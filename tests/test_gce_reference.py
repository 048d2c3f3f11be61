"""GCE float64 reference and the `xla` / `chunked` paths of `pallas_kernels.gce.fused_gce`.

The reference itself is checked against finite differences and against plain CE where GCE must
reduce to it; `xla` and `chunked` are checked against the reference (loss, d/dx, d/dw) on random
inputs with -1 neighbour padding, all-zero weight rows, invalid rows and ragged N. The last test
measures that the chunked path's compiled temporary memory does not grow with N x V.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gce import fused_gce, gce_reference


def _problem(seed, num_tokens=37, dim=24, vocab=53, num_neighbours=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_tokens, dim)).astype(np.float32)
  w = (rng.normal(size=(vocab, dim)) * 0.5).astype(np.float32)
  labels = rng.integers(0, vocab, num_tokens)
  labels[1] = -1                                     # ignored row
  neighbours = rng.integers(0, vocab, (vocab, num_neighbours))
  neighbours[rng.random((vocab, num_neighbours)) < 0.25] = -1
  neighbours[:, 0] = np.arange(vocab)
  weights = rng.random((vocab, num_neighbours)).astype(np.float32)
  weights[5] = 0.0                                   # all-zero row -> plain CE fallback
  labels[-1] = 5
  valid = rng.random(num_tokens) > 0.2
  return x, w, labels, neighbours, weights, valid


@pytest.mark.parametrize("mode", ["soft", "marginal"])
def test_reference_gradients_match_finite_differences(mode):
  x, w, labels, nbr, nw, valid = _problem(0, num_tokens=6, dim=5, vocab=9, num_neighbours=3)
  x, w = x.astype(np.float64), w.astype(np.float64)
  _, dx, dw = gce_reference(x, w, labels, nbr, nw, mode=mode, ce_mix=0.3, valid=valid)
  eps = 1e-6

  def total(x_, w_):
    return gce_reference(x_, w_, labels, nbr, nw, mode=mode, ce_mix=0.3, valid=valid,
                         with_grads=False)[0].sum()

  for (arr, grad, which) in ((x, dx, 0), (w, dw, 1)):
    numeric = np.zeros_like(arr)
    for index in np.ndindex(arr.shape):
      plus, minus = arr.copy(), arr.copy()
      plus[index] += eps
      minus[index] -= eps
      args_p = (plus, w) if which == 0 else (x, plus)
      args_m = (minus, w) if which == 0 else (x, minus)
      numeric[index] = (total(*args_p) - total(*args_m)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-6, rtol=1e-5)


def test_reference_reduces_to_cross_entropy():
  x, w, labels, _, _, _ = _problem(1)
  labels = np.abs(labels)
  vocab = w.shape[0]
  logits = x.astype(np.float64) @ w.T.astype(np.float64)
  ce = np.log(np.exp(logits).sum(1)) - logits[np.arange(len(labels)), labels]
  singleton = np.arange(vocab)[:, None]
  for mode in ("soft", "marginal"):
    loss, _, _ = gce_reference(x, w, labels, singleton, np.ones((vocab, 1)), mode=mode)
    np.testing.assert_allclose(loss, ce, rtol=1e-10)
    # ce_mix = 1 is plain CE whatever the groups; all-zero weights fall back to CE.
    loss, _, _ = gce_reference(x, w, labels, np.tile(singleton, (1, 3)), np.zeros((vocab, 3)),
                               mode=mode)
    np.testing.assert_allclose(loss, ce, rtol=1e-10)


def test_marginal_is_at_most_soft():
  # -log sum q p <= -sum q log p (Jensen): a check that the two modes are not swapped.
  x, w, labels, nbr, nw, _ = _problem(2)
  soft = gce_reference(x, w, labels, nbr, nw, mode="soft", with_grads=False)[0]
  marginal = gce_reference(x, w, labels, nbr, nw, mode="marginal", with_grads=False)[0]
  assert np.all(marginal <= soft + 1e-12)
  assert np.any(marginal < soft - 1e-3)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize("mode,ce_mix", [("soft", 0.0), ("marginal", 0.3)])
def test_impl_matches_reference(impl, mode, ce_mix):
  x, w, labels, nbr, nw, valid = _problem(3)
  blocks = {"chunk_size": 16} if impl == "chunked" else {}   # 37 rows: ragged last chunk

  def loss_fn(x_, w_):
    return fused_gce(x_, w_, labels, nbr, nw, mode=mode, ce_mix=ce_mix, valid=valid, impl=impl,
                     **blocks)

  loss = loss_fn(x, w)
  dx, dw = jax.grad(lambda a, b: loss_fn(a, b).sum(), argnums=(0, 1))(x, w)
  ref_loss, ref_dx, ref_dw = gce_reference(x, w, labels, nbr, nw, mode=mode, ce_mix=ce_mix,
                                           valid=valid)
  assert loss.dtype == jnp.float32 and loss.shape == labels.shape
  np.testing.assert_allclose(loss, ref_loss, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(dx, ref_dx, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(dw, ref_dw, atol=2e-5, rtol=2e-5)
  ignored = (~valid) | (labels < 0)
  assert np.all(np.asarray(loss)[ignored] == 0.0)
  assert np.all(np.asarray(dx)[ignored] == 0.0)


def test_chunked_bf16_and_weighted_cotangent():
  x, w, labels, nbr, nw, valid = _problem(4)
  cotangent = np.random.default_rng(4).normal(size=labels.shape).astype(np.float32)
  xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  fn = lambda a, b: jnp.sum(cotangent * fused_gce(
      a, b, labels, nbr, nw, mode="soft", valid=valid, impl="chunked", chunk_size=8))
  dx, dw = jax.grad(fn, argnums=(0, 1))(xb, wb)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  x64, w64 = np.asarray(xb, np.float64), np.asarray(wb, np.float64)
  # fp32 twin on the same (bf16-rounded) inputs; the bf16 dZ operands cost ~2^-8 relative.
  ref = jax.grad(lambda a, b: jnp.sum(cotangent * fused_gce(
      a, b, labels, nbr, nw, mode="soft", valid=valid, impl="xla")), argnums=(0, 1))(
          jnp.asarray(x64, jnp.float32), jnp.asarray(w64, jnp.float32))
  for got, want in ((dx, ref[0]), (dw, ref[1])):
    got, want = np.asarray(got, np.float32), np.asarray(want)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2


def test_bad_arguments_raise_clear_errors():
  x, w, labels, nbr, nw, _ = _problem(5)
  with pytest.raises(ValueError, match="mode"):
    fused_gce(x, w, labels, nbr, nw, mode="hard")
  with pytest.raises(ValueError, match="impl"):
    fused_gce(x, w, labels, nbr, nw, impl="cuda")
  with pytest.raises(ValueError, match="ce_mix"):
    fused_gce(x, w, labels, nbr, nw, ce_mix=1.5)
  with pytest.raises(ValueError, match="unknown"):
    fused_gce(x, w, labels, nbr, nw, impl="chunked", block_q=8)
  with pytest.raises(ValueError, match="neighbours"):
    fused_gce(x, w, labels, nbr[:-1], nw[:-1])
  with pytest.raises(ValueError, match="labels"):
    fused_gce(x, w, labels[:-1], nbr, nw)


def _temp_bytes(impl, num_tokens, vocab, dim=32, chunk=64, grad=False):
  x = jax.ShapeDtypeStruct((num_tokens, dim), jnp.float32)
  w = jax.ShapeDtypeStruct((vocab, dim), jnp.float32)
  labels = jnp.zeros((num_tokens,), jnp.int32)
  nbr = jnp.zeros((vocab, 4), jnp.int32)
  nw = jnp.ones((vocab, 4), jnp.float32)
  blocks = {"chunk_size": chunk} if impl == "chunked" else {}
  fn = lambda a, b: fused_gce(a, b, labels, nbr, nw, impl=impl, **blocks)
  if grad:
    fn = jax.grad(lambda a, b: fused_gce(a, b, labels, nbr, nw, impl=impl, **blocks).sum(),
                  argnums=(0, 1))
  return jax.jit(fn).lower(x, w).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("grad", [False, True])
def test_chunked_memory_is_bounded_by_chunk_not_tokens(grad):
  vocab, chunk = 4096, 64
  small, large = 256, 2048
  logits_bytes = (large - small) * vocab * 4
  chunked_growth = _temp_bytes("chunked", large, vocab, chunk=chunk, grad=grad) - _temp_bytes(
      "chunked", small, vocab, chunk=chunk, grad=grad)
  xla_growth = _temp_bytes("xla", large, vocab, grad=grad) - _temp_bytes(
      "xla", small, vocab, grad=grad)
  # Materialised logits grow by N x V x 4 bytes; the chunked path only by O(N (D + K)).
  assert xla_growth >= logits_bytes
  assert chunked_growth < logits_bytes / 20
  # And its total scratch is a few chunk x V blocks (+ the f32 dw accumulator in backward).
  total = _temp_bytes("chunked", large, vocab, chunk=chunk, grad=grad)
  assert total < 8 * chunk * vocab * 4 + vocab * 32 * 4 + large * 32 * 16


def test_auto_is_chunked_on_cpu():
  from pallas_kernels.gce import resolve_impl
  assert resolve_impl("auto") == "chunked"
  x, w, labels, nbr, nw, valid = _problem(6)
  auto = fused_gce(x, w, labels, nbr, nw, valid=valid)
  ref = gce_reference(x, w, labels, nbr, nw, valid=valid, with_grads=False)[0]
  np.testing.assert_allclose(auto, ref, atol=2e-5, rtol=2e-5)
