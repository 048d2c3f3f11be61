"""The fused GCE under a mesh (`pallas_kernels.gce.sharded`, wired in `mdd.objectives.losses`).

On 8 fake CPU devices: the sharded loss and its gradients w.r.t. the hidden states and the head
equal the unsharded `fused_gce` (same impl; Pallas kernels in interpret mode) for rows split over
the batch axes and the head replicated or split along V; N is ragged (not a multiple of the row
shards or the kernel blocks). The compiled HLO is checked for collectives of N x V size.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mdd.objectives import losses
from mdd.utils import sharding as sharding_lib
from pallas_kernels.gce import fused_gce
from pallas_kernels.gce.sharded import sharded_fused_gce

BLOCKS = {"chunked": dict(chunk_size=8),
          "pallas_tpu": dict(block_n=16, block_v=128, vocab_chunk=128),
          "pallas_gpu": dict(block_n=16, block_v=16, block_k=16, vocab_chunk=32)}


def _mesh(data, fsdp, tensor):
  return Mesh(np.asarray(jax.devices()[:data * fsdp * tensor]).reshape(data, fsdp, tensor),
              sharding_lib.MESH_AXES)


def _problem(seed, num_tokens, dim, vocab, num_neighbours):
  """Random inputs with padded neighbours, a plain-CE fallback row and ignored rows."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_tokens, dim)).astype(np.float32)
  w = (rng.normal(size=(vocab, dim)) * 0.5).astype(np.float32)
  labels = rng.integers(0, vocab, num_tokens).astype(np.int32)
  labels[0] = -1
  neighbours = rng.integers(0, vocab, (vocab, num_neighbours))
  neighbours[rng.random((vocab, num_neighbours)) < 0.25] = -1
  neighbours[:, 0] = np.arange(vocab)
  weights = rng.random((vocab, num_neighbours)).astype(np.float32) + 0.05
  weights[labels[1]] = 0.0
  valid = rng.random(num_tokens) > 0.15
  # Per-token cotangents that are not all equal, so a row mix-up shows in the gradients.
  cotangent = rng.normal(size=num_tokens).astype(np.float32)
  return x, w, labels, neighbours.astype(np.int32), weights, valid, cotangent


def _rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.linalg.norm(got - want) / np.linalg.norm(want)


def _loss_and_grads(loss_fn, x, w, cotangent):
  loss, vjp = jax.vjp(loss_fn, jnp.asarray(x), jnp.asarray(w))
  dx, dw = vjp(jnp.asarray(cotangent))
  return loss, dx, dw


@pytest.mark.parametrize("impl,mesh_shape,vocab_axes,mode,ce_mix", [
    ("chunked", (8, 1, 1), (), "soft", 0.3),
    ("chunked", (2, 2, 2), ("tensor",), "marginal", 0.5),
    ("chunked", (2, 2, 2), (), "marginal", 0.0),
    ("pallas_tpu", (2, 2, 2), ("tensor",), "soft", 0.2),
    ("pallas_gpu", (8, 1, 1), (), "marginal", 0.25),
    ("pallas_gpu", (1, 2, 4), ("tensor",), "marginal", 0.4),
])
def test_sharded_equals_unsharded(impl, mesh_shape, vocab_axes, mode, ce_mix):
  # N=45: not a multiple of 8 row shards, nor of block_n=16 / chunk 8; V=64 splits over tensor.
  x, w, labels, nbr, nw, valid, cotangent = _problem(0, 45, 24, 64, 5)
  mesh = _mesh(*mesh_shape)
  row_axes = tuple(a for a in sharding_lib.MESH_AXES if a not in vocab_axes)
  kwargs = dict(mode=mode, ce_mix=ce_mix, valid=valid, impl=impl, interpret=True,
                **BLOCKS[impl])

  def unsharded(a, b):
    return fused_gce(a, b, labels, nbr, nw, **kwargs)

  def sharded(a, b):
    return sharded_fused_gce(a, b, labels, nbr, nw, mesh=mesh, row_axes=row_axes,
                             vocab_axes=vocab_axes, **kwargs)

  want = _loss_and_grads(unsharded, x, w, cotangent)
  got = _loss_and_grads(sharded, x, w, cotangent)
  for name, g, r in zip(("loss", "dx", "dw"), got, want):
    assert g.shape == r.shape, name
    assert _rel(g, r) < 2e-6, (name, _rel(g, r))
  ignored = (~valid) | (labels < 0)
  assert np.all(np.asarray(got[0])[ignored] == 0.0)
  assert np.all(np.asarray(got[1])[ignored] == 0.0)


def test_bfloat16_vocab_sharded():
  x, w, labels, nbr, nw, valid, cotangent = _problem(1, 37, 16, 32, 4)
  x, w = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  kwargs = dict(mode="soft", ce_mix=0.1, valid=valid, impl="chunked", chunk_size=8)
  want = _loss_and_grads(lambda a, b: fused_gce(a, b, labels, nbr, nw, **kwargs), x, w,
                         cotangent)
  got = _loss_and_grads(
      lambda a, b: sharded_fused_gce(a, b, labels, nbr, nw, mesh=_mesh(2, 2, 2),
                                     row_axes=("data", "fsdp"), vocab_axes=("tensor",),
                                     **kwargs), x, w, cotangent)
  for name, g, r in zip(("loss", "dx", "dw"), got, want):
    assert g.dtype == r.dtype, name
    assert _rel(g, r) < 1e-2, (name, _rel(g, r))


def test_bad_axes_raise():
  x, w, labels, nbr, nw, _, _ = _problem(2, 16, 8, 30, 2)
  with pytest.raises(ValueError, match="not a multiple"):  # V=30 on 4 vocab shards.
    sharded_fused_gce(x, w, labels, nbr, nw, mesh=_mesh(2, 1, 4), row_axes=("data",),
                      vocab_axes=("tensor",), impl="chunked")
  with pytest.raises(ValueError, match="distinct"):
    sharded_fused_gce(x, w, labels, nbr, nw, mesh=_mesh(2, 1, 4), row_axes=("tensor",),
                      vocab_axes=("tensor",), impl="chunked")


def test_layout_follows_the_rules():
  rules = sharding_lib.DEFAULT_RULES
  with nn.logical_axis_rules(list(rules)):
    assert losses.gce_layout(_mesh(2, 2, 2), 64) == (("data", "fsdp"), ("tensor",))
    # V not divisible by tensor: the head is replicated, the rows take the tensor axis too.
    assert losses.gce_layout(_mesh(2, 2, 2), 63) == (("data", "fsdp", "tensor"), ())
    assert losses.gce_layout(_mesh(8, 1, 1), 64) == (("data",), ())
    assert losses.gce_layout(_mesh(1, 1, 1), 64) is None
  assert losses.gce_layout(None, 64) is None


def _train_like_loss(mesh_context, mesh, hidden, w, labels, weights, nbr, nw):
  """`weighted_loss` and its grads under jit inside a mesh context, as in the train step."""

  def step(h, head):
    return losses.weighted_loss(h, head, labels, weights, nbr, nw, loss_type="gce",
                                mode="marginal", ce_mix=0.3, impl="chunked", chunk_size=8)

  hidden = jax.device_put(hidden, NamedSharding(mesh, P(("data", "fsdp"))))
  w = jax.device_put(w, NamedSharding(mesh, P("tensor", "fsdp")))
  with mesh_context, nn.logical_axis_rules(list(sharding_lib.DEFAULT_RULES)):
    fn = jax.jit(jax.value_and_grad(step, argnums=(0, 1)))
    hlo = fn.lower(hidden, w).compile().as_text()
    return fn(hidden, w), hlo


def test_losses_use_the_mesh(monkeypatch):
  calls = []
  real = losses.gce_lib.sharded_fused_gce

  def spy(*args, **kwargs):
    calls.append((kwargs["row_axes"], kwargs["vocab_axes"]))
    return real(*args, **kwargs)

  monkeypatch.setattr(losses.gce_lib, "sharded_fused_gce", spy)
  x, w, labels, nbr, nw, valid, _ = _problem(3, 4 * 12, 16, 64, 4)
  weights = np.where(valid, np.random.default_rng(4).random(48), 0.0).astype(np.float32)
  labels[0] = 5
  hidden, labels, weights = x.reshape(4, 12, 16), labels.reshape(4, 12), weights.reshape(4, 12)
  mesh = _mesh(2, 2, 2)
  mesh_context = jax.set_mesh(mesh)  # What the train loop's sharding.mesh_context sets.
  (loss, (dh, dw)), _ = _train_like_loss(mesh_context, mesh, hidden, w, labels, weights, nbr,
                                           nw)
  ref_loss, (ref_dh, ref_dw) = jax.value_and_grad(
      lambda h, head: losses.weighted_loss(h, head, labels, weights, nbr, nw, mode="marginal",
                                           ce_mix=0.3, impl="chunked", chunk_size=8),
      argnums=(0, 1))(hidden, w)
  assert _rel(loss, ref_loss) < 2e-6
  assert _rel(dh, ref_dh) < 2e-6 and _rel(dw, ref_dw) < 2e-6
  # The sharded path ran under the mesh (and only there): rows on the batch axes, V on tensor.
  assert calls and set(calls) == {(("data", "fsdp"), ("tensor",))}


_COLLECTIVE = re.compile(
    r"= (.*?) (all-gather|all-reduce|all-to-all|reduce-scatter|collective-permute)"
    r"(?:-start)?\(")
_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def _largest_collective(hlo: str) -> int:
  """Element count of the largest array any collective of `hlo` produces."""
  sizes = [0]
  for result_type, _ in _COLLECTIVE.findall(hlo):
    for dims in _SHAPE.findall(result_type):
      sizes.append(int(np.prod([int(d) for d in dims.split(",") if d])))
  return max(sizes)


@pytest.mark.parametrize("mesh_shape,vocab_axes", [((8, 1, 1), ()), ((2, 2, 2), ("tensor",))])
def test_no_n_by_v_collective(mesh_shape, vocab_axes):
  # N x V = 32768; the legitimate collectives are V x D = 1024 (head), N/4 x D (dx) and smaller.
  num_tokens, dim, vocab = 256, 8, 128
  x, w, labels, nbr, nw, _, _ = _problem(5, num_tokens, dim, vocab, 4)
  mesh = _mesh(*mesh_shape)
  xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
  ws = jax.device_put(w, NamedSharding(mesh, P("tensor", "fsdp")))
  labels = jax.device_put(labels, NamedSharding(mesh, P(("data", "fsdp"))))
  blocks = dict(impl="pallas_tpu", interpret=True, block_n=16, block_v=128)
  row_axes = tuple(a for a in sharding_lib.MESH_AXES if a not in vocab_axes)

  def compiled(loss_fn):
    grad_fn = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(loss_fn(a, b)), argnums=(0, 1)))
    return grad_fn.lower(xs, ws).compile().as_text()

  hlo = compiled(lambda a, b: sharded_fused_gce(a, b, labels, nbr, nw, mesh=mesh,
                                                row_axes=row_axes, vocab_axes=vocab_axes,
                                                **blocks))
  assert "all-reduce" in hlo  # dw summed over the row shards: the parser sees collectives.
  assert _largest_collective(hlo) < num_tokens * vocab // 8
  if vocab_axes:
    # Control: left to XLA, the kernel's inputs and outputs are gathered, N x V included.
    hlo = compiled(lambda a, b: fused_gce(a, b, labels, nbr, nw, **blocks))
    assert _largest_collective(hlo) >= num_tokens * vocab
