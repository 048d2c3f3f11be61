"""Pallas GCE kernels (GPU Triton-lowered and TPU Mosaic) in interpret mode vs the float64 reference.

Interpret mode runs the kernel bodies on CPU but does not check that they lower for the
hardware, so `test_kernels_lower_for_hardware` also lowers the forward+backward for CUDA (Pallas ->
Triton IR) and TPU (Pallas -> Mosaic) with `jax.export`, no accelerator needed; compiling and
running on a GPU is `python -m mdd.bench.gce --check=pallas_gpu` (passed on the H200). Shapes are small and ragged (N, V and D not multiples of the blocks) and block sizes
are small so several row / vocabulary blocks, vocab splits and backward vocab chunks are hit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gce import fused_gce, gce_reference
from pallas_kernels.gce import gpu as gce_gpu

GPU_BLOCKS = dict(block_n=16, block_v=32, block_k=16, vocab_chunk=64)
TPU_BLOCKS = dict(block_n=16, block_v=128, vocab_chunk=128)


def _problem(seed, num_tokens, dim, vocab, num_neighbours):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_tokens, dim)).astype(np.float32)
  w = (rng.normal(size=(vocab, dim)) * 0.4).astype(np.float32)
  labels = rng.integers(0, vocab, num_tokens)
  labels[0] = -1
  neighbours = rng.integers(0, vocab, (vocab, num_neighbours))
  neighbours[rng.random((vocab, num_neighbours)) < 0.25] = -1
  neighbours[:, 0] = np.arange(vocab)
  weights = rng.random((vocab, num_neighbours)).astype(np.float32)
  weights[labels[1]] = 0.0                       # one row falls back to plain CE
  valid = rng.random(num_tokens) > 0.15
  return x, w, labels, neighbours, weights, valid


def _check(impl, blocks, mode, ce_mix, seed, dtype, shape, tol):
  x, w, labels, nbr, nw, valid = _problem(seed, *shape)
  # Round the inputs to `dtype` first so kernel and reference see identical numbers.
  x = np.asarray(jnp.asarray(x, dtype), np.float32)
  w = np.asarray(jnp.asarray(w, dtype), np.float32)

  def loss_fn(a, b):
    return fused_gce(a, b, labels, nbr, nw, mode=mode, ce_mix=ce_mix, valid=valid, impl=impl,
                     interpret=True, **blocks)

  xj, wj = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
  loss = loss_fn(xj, wj)
  dx, dw = jax.grad(lambda a, b: loss_fn(a, b).sum(), argnums=(0, 1))(xj, wj)
  ref_loss, ref_dx, ref_dw = gce_reference(x, w, labels, nbr, nw, mode=mode, ce_mix=ce_mix,
                                           valid=valid)
  rel = lambda got, want: np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
  assert rel(loss, ref_loss) < 1e-5
  assert rel(dx, ref_dx) < tol and rel(dw, ref_dw) < tol
  ignored = (~valid) | (labels < 0)
  assert np.all(np.asarray(loss)[ignored] == 0.0)
  assert np.all(np.asarray(dx, np.float32)[ignored] == 0.0)


@pytest.mark.parametrize("mode,ce_mix,dtype,tol", [
    ("soft", 0.0, jnp.float32, 1e-5),
    ("marginal", 0.25, jnp.bfloat16, 1e-2),
])
def test_pallas_gpu_interpret_matches_reference(mode, ce_mix, dtype, tol):
  # N=45, D=40 (padded to 48), V=150 (padded to 192: 3 backward vocab chunks, 2 forward splits).
  _check("pallas_gpu", dict(GPU_BLOCKS, num_splits=2), mode, ce_mix, seed=0, dtype=dtype,
         shape=(45, 40, 150, 6), tol=tol)


@pytest.mark.parametrize("mode,ce_mix,dtype,tol", [
    ("marginal", 0.0, jnp.float32, 1e-5),
    ("soft", 0.4, jnp.bfloat16, 1e-2),
])
def test_pallas_tpu_interpret_matches_reference(mode, ce_mix, dtype, tol):
  # N=40 (3 row blocks), D=72 (padded to 128), V=300 (padded to 384: 3 vocab chunks).
  _check("pallas_tpu", TPU_BLOCKS, mode, ce_mix, seed=1, dtype=dtype, shape=(40, 72, 300, 5),
         tol=tol)


def test_gpu_linear_lse_splits_and_vocab_padding():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(32, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(100, 32)), jnp.float32)
  want = jax.nn.logsumexp(np.asarray(x, np.float64) @ np.asarray(w, np.float64).T, axis=1)
  for splits, fastest in ((1, True), (3, True), (2, False)):
    got = gce_gpu.linear_lse(x, w, vocab=100, block_n=16, block_v=16, block_k=16,
                             num_splits=splits, splits_fastest=fastest, interpret=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_kernel_block_sizes_are_validated():
  x, w, labels, nbr, nw, _ = _problem(3, 8, 16, 32, 2)
  with pytest.raises(ValueError, match="power of 2"):
    fused_gce(x, w, labels, nbr, nw, impl="pallas_gpu", interpret=True, block_v=48)
  with pytest.raises(ValueError, match="multiple of 128"):
    fused_gce(x, w, labels, nbr, nw, impl="pallas_tpu", interpret=True, block_v=100)
  with pytest.raises(ValueError, match="vocab_chunk"):
    fused_gce(x, w, labels, nbr, nw, impl="pallas_gpu", interpret=True, vocab_chunk=40)


@pytest.mark.parametrize("impl,platform,custom_call", [
    ("pallas_gpu", "cuda", "__gpu$xla.gpu.triton"),
    ("pallas_tpu", "tpu", "tpu_custom_call"),
])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernels_lower_for_hardware(impl, platform, custom_call, dtype):
  from jax import export  # pylint: disable=g-import-not-at-top
  num_tokens, dim, vocab = 1000, 200, 3000                  # ragged for the default blocks
  labels = jnp.zeros((num_tokens,), jnp.int32)
  nbr = jnp.zeros((vocab, 4), jnp.int32)
  nw = jnp.ones((vocab, 4), jnp.float32)

  def loss_and_grads(x, w):
    return jax.value_and_grad(
        lambda a, b: fused_gce(a, b, labels, nbr, nw, mode="marginal", impl=impl).sum(),
        argnums=(0, 1))(x, w)

  exported = export.export(
      jax.jit(loss_and_grads), platforms=[platform],
      disabled_checks=[export.DisabledSafetyCheck.custom_call(custom_call)])(
          jax.ShapeDtypeStruct((num_tokens, dim), dtype),
          jax.ShapeDtypeStruct((vocab, dim), dtype))
  module = exported.mlir_module()
  # Both kernels (LSE forward, softmax backward) are in the lowered program.
  assert module.count(custom_call) >= 2
