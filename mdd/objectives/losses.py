"""The one CE / GCE loss entry point of the denoiser, and its token metrics.

The loss takes hidden states and the head's classifier `w [V, D]` (never logits) and dispatches
to `pallas_kernels.gce.fused_gce` (GCE as defined in docs/architecture.md: `soft`, `marginal`, `ce_mix`,
`valid`):
  impl = xla      materialised `N x V` logits (reference speed, memory O(N V));
         chunked  pure JAX `custom_vjp` over token chunks (O(chunk V) memory);
         pallas   the fused kernel of the backend (`pallas_gpu` / `pallas_tpu`);
         auto     the kernel's own choice (the Pallas kernel on GPU/TPU, chunked on CPU).
Under a device mesh (the train loop's `mdd.utils.sharding.mesh_context`, or `jax.set_mesh`) the fused paths run
through `pallas_kernels.gce.sharded` (`shard_map`): the head is split along V over the mesh
axes of the `vocab` logical rule (when they divide V, else replicated) and the rows over the
`act_batch` axes plus every other axis, so no device idles and nothing N x V is gathered.
Losses by name (`LOSSES`, `config.loss.type`): each maps the tokenizer's neighbour table to the
table the fused kernel runs with. `ce` is GCE with the trivial K=1 table (each code is its own
group), which the definition reduces to plain cross-entropy; `gce` uses the table as it is.
Adding a loss of this family is one function and one entry.

Metrics need argmax over V: `chunked_argmax` scans token chunks so nothing `N x V` is built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdd.utils import sharding as sharding_lib
from pallas_kernels import gce as gce_lib

IMPLS = ("auto", "xla", "chunked", "pallas")
MODES = ("soft", "marginal")


def _kernel_impl(impl: str) -> str:
  """Maps this module's `impl` to `fused_gce`'s."""
  if impl not in IMPLS:
    raise ValueError(f"loss impl={impl!r}: choose one of {IMPLS}")
  if impl != "pallas":
    return impl
  backend = jax.default_backend()
  if backend == "gpu":
    return "pallas_gpu"
  if backend == "tpu":
    return "pallas_tpu"
  raise ValueError(f"loss impl='pallas' needs a GPU or TPU backend, got {backend!r}; "
                   "use 'chunked' (or 'pallas' with interpret=True in tests)")


def _active_mesh():
  """The mesh of the enclosing `sharding.mesh_context` (the train loop's) or of `jax.set_mesh`,
  or None."""
  mesh = sharding_lib.current_mesh()
  if mesh is not None:
    return mesh
  abstract = jax.sharding.get_abstract_mesh()
  return None if abstract.empty else abstract


def _mesh_axes(rules: dict, name: str, mesh) -> tuple[str, ...]:
  """The mesh axes (of size > 1) that logical axis `name` maps to under `rules`."""
  axes = rules.get(name)
  axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
  return tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)


def gce_layout(mesh, vocab: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
  """(row_axes, vocab_axes) for the sharded GCE on `mesh`, or None for one device.

  The vocabulary follows the `vocab` logical rule (the head's own sharding) when its axes divide
  V; the rows take the `act_batch` axes (the hidden states' sharding) first, then every other
  axis of size > 1, so each device gets a distinct block of rows x vocabulary.
  """
  if mesh is None or mesh.size == 1:
    return None
  if any(t == jax.sharding.AxisType.Manual for t in getattr(mesh, "axis_types", ())):
    return None  # Already inside a shard_map: run the kernel on the local block as it is.
  rules = dict(nn.get_logical_axis_rules())
  vocab_axes = _mesh_axes(rules, "vocab", mesh)
  if vocab % max(1, math.prod(mesh.shape[a] for a in vocab_axes)):
    vocab_axes = ()
  batch_axes = [a for a in _mesh_axes(rules, "act_batch", mesh) if a not in vocab_axes]
  others = [a for a in mesh.axis_names
            if mesh.shape[a] > 1 and a not in vocab_axes and a not in batch_axes]
  return tuple(batch_axes + others), vocab_axes


def identity_table(vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """The K=1 neighbour table under which GCE is plain CE."""
  return (jnp.arange(vocab_size, dtype=jnp.int32)[:, None],
          jnp.ones((vocab_size, 1), jnp.float32))


def _ce_table(neighbours, neighbour_weights, vocab: int, mode: str, ce_mix: float):
  del neighbours, neighbour_weights, mode, ce_mix
  return (*identity_table(vocab), "soft", 0.0)


def _gce_table(neighbours, neighbour_weights, vocab: int, mode: str, ce_mix: float):
  if neighbours is None or neighbour_weights is None:
    raise ValueError("loss_type='gce' needs neighbours and neighbour_weights [V, K]")
  if neighbours.shape[0] != vocab or neighbour_weights.shape != neighbours.shape:
    raise ValueError(f"neighbour table {neighbours.shape} / weights "
                     f"{neighbour_weights.shape} do not match V={vocab}")
  return neighbours, neighbour_weights, mode, ce_mix


@dataclasses.dataclass(frozen=True)
class TokenLoss:
  """`table(neighbours, weights, V, mode, ce_mix) -> (neighbours, weights, mode, ce_mix)` the
  fused kernel runs with; `needs_table`: whether the tokenizer's neighbour table is read."""
  table: Callable
  needs_table: bool


LOSSES: dict[str, TokenLoss] = {
    "ce": TokenLoss(table=_ce_table, needs_table=False),
    "gce": TokenLoss(table=_gce_table, needs_table=True),
}


def token_loss(hidden: jax.Array, head_w: jax.Array, labels: jax.Array,
               neighbours: jax.Array | None = None,
               neighbour_weights: jax.Array | None = None, *, loss_type: str = "gce",
               mode: str = "soft", ce_mix: float = 0.0, valid: jax.Array | None = None,
               impl: str = "auto", interpret: bool = False, mesh=None,
               **block_sizes) -> jax.Array:
  """Per-token loss, float32 with the shape of `labels`.

  Args:
    hidden: [..., D] final hidden states (any float dtype); head_w: [V, D].
    labels: int [...] target codes; rows with label < 0 or `valid` False give 0.
    neighbours, neighbour_weights: [V, K] GCE table (ignored for loss_type="ce").
    loss_type: a name in `LOSSES`; mode: "soft" | "marginal"; ce_mix: weight of plain CE.
    impl: "auto" | "xla" | "chunked" | "pallas" (see module docstring).
    mesh: the device mesh for the fused paths; None: the enclosing mesh context, if any.
  """
  if loss_type not in LOSSES:
    raise ValueError(f"loss_type={loss_type!r}: choose one of {sorted(LOSSES)}")
  if mode not in MODES:
    raise ValueError(f"loss mode={mode!r}: choose one of {MODES}")
  if not 0.0 <= ce_mix <= 1.0:
    raise ValueError(f"ce_mix={ce_mix}: must be in [0, 1]")
  if hidden.shape[:-1] != labels.shape:
    raise ValueError(f"hidden {hidden.shape} and labels {labels.shape} disagree on tokens")
  if hidden.shape[-1] != head_w.shape[-1]:
    raise ValueError(f"hidden width {hidden.shape[-1]} != head width {head_w.shape[-1]}")
  neighbours, neighbour_weights, mode, ce_mix = LOSSES[loss_type].table(
      neighbours, neighbour_weights, head_w.shape[0], mode, ce_mix)
  x = hidden.reshape(-1, hidden.shape[-1])
  flat_valid = None if valid is None else valid.reshape(-1).astype(bool)
  kernel_impl = _kernel_impl(impl)
  args = (x, head_w.astype(x.dtype), labels.reshape(-1).astype(jnp.int32),
          neighbours.astype(jnp.int32), neighbour_weights.astype(jnp.float32))
  kwargs = dict(mode=mode, ce_mix=float(ce_mix), valid=flat_valid, impl=kernel_impl,
                interpret=interpret, **block_sizes)
  mesh = _active_mesh() if mesh is None else mesh
  layout = gce_layout(mesh, head_w.shape[0]) if kernel_impl != "xla" else None
  if layout is None:
    loss = gce_lib.fused_gce(*args, **kwargs)
  else:
    row_axes, vocab_axes = layout
    loss = gce_lib.sharded_fused_gce(*args, mesh=mesh, row_axes=row_axes,
                                     vocab_axes=vocab_axes, **kwargs)
  return loss.reshape(labels.shape)


def weighted_loss(hidden, head_w, labels, weights, neighbours=None, neighbour_weights=None,
                  **kwargs) -> jax.Array:
  """`sum(weights * token_loss)`; tokens with zero weight are passed as invalid."""
  per_token = token_loss(hidden, head_w, labels, neighbours, neighbour_weights,
                         valid=weights > 0, **kwargs)
  return jnp.sum(weights.astype(jnp.float32) * per_token)


def chunked_argmax(hidden: jax.Array, head_w: jax.Array, *, chunk_size: int = 1024,
                   rng: jax.Array | None = None, temperature: float = 1.0) -> jax.Array:
  """argmax_v (x w_v) per token, scanning token chunks (memory O(chunk V), never N x V).

  With `rng`, adds Gumbel noise scaled by `temperature`: a sample from softmax(z / temperature).
  Returns int32 with the shape of `hidden[..., 0]`.
  """
  lead = hidden.shape[:-1]
  x = hidden.reshape(-1, hidden.shape[-1])
  n = x.shape[0]
  chunk = max(1, min(chunk_size, n))
  padded = -(-n // chunk) * chunk
  x = jnp.pad(x, ((0, padded - n), (0, 0))).reshape(padded // chunk, chunk, -1)
  w = head_w.astype(x.dtype)
  keys = (jax.random.split(rng, padded // chunk) if rng is not None
          else jnp.zeros((padded // chunk,), jnp.uint32))

  def one(args):
    xc, key = args
    logits = jnp.dot(xc, w.T, preferred_element_type=jnp.float32)
    if rng is not None:
      logits = logits / temperature + jax.random.gumbel(key, logits.shape)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  preds = jax.lax.map(one, (x, keys))
  return preds.reshape(-1)[:n].reshape(lead)


def token_metric_sums(hidden, head_w, labels, inputs, masked, edited=None, visible_clean=None,
                      neighbours=None, *, chunk_size: int = 1024) -> dict[str, jax.Array]:
  """Counts for the denoiser's metrics (sum them over batches, then `summarise`).

  masked_acc: argmax == label on masked tokens; group_acc: argmax in the label's neighbour group
  (non-padding entries) on masked tokens; edit_detect: argmax != (corrupted) input on edited
  tokens; edit_correct: argmax == label on edited tokens; keep_acc: argmax == input on clean
  visible tokens.
  """
  pred = chunked_argmax(hidden, head_w, chunk_size=chunk_size)
  f32 = lambda a: a.astype(jnp.float32)
  masked = masked.astype(bool)
  out = {"masked_acc/correct": jnp.sum(f32(masked & (pred == labels))),
         "masked_acc/count": jnp.sum(f32(masked))}
  if neighbours is not None:
    group = neighbours[labels]
    in_group = jnp.any((group == pred[..., None]) & (group >= 0), axis=-1) | (pred == labels)
    out["group_acc/correct"] = jnp.sum(f32(masked & in_group))
    out["group_acc/count"] = out["masked_acc/count"]
  if edited is not None:
    edited = edited.astype(bool)
    out["edit_detect/correct"] = jnp.sum(f32(edited & (pred != inputs)))
    out["edit_detect/count"] = jnp.sum(f32(edited))
    out["edit_correct/correct"] = jnp.sum(f32(edited & (pred == labels)))
    out["edit_correct/count"] = out["edit_detect/count"]
  if visible_clean is not None:
    visible_clean = visible_clean.astype(bool)
    out["keep_acc/correct"] = jnp.sum(f32(visible_clean & (pred == inputs)))
    out["keep_acc/count"] = jnp.sum(f32(visible_clean))
  return out


def summarise(sums: dict) -> dict[str, float | jax.Array]:
  """`{name/correct, name/count}` -> `{name: correct / count}` (0 when count is 0)."""
  names = sorted({k.split("/")[0] for k in sums})
  return {n: sums[f"{n}/correct"] / jnp.maximum(sums[f"{n}/count"], 1.0) for n in names}
