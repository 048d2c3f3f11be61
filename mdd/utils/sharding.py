"""Device mesh, logical-axis rules, and shardings for train state and host batches.

Weights carry logical axis names (`embed, mlp, heads, kv, vocab, conv_in, conv_out, codebook`),
activations their own (`act_batch, act_len, act_embed, act_heads, act_vocab`). The config maps
them to the mesh axes (`data, fsdp, tensor`), so the same model code runs on 1 CPU, 8 fake CPU
devices, one GPU or a TPU pod; only the mesh and the rules change.
"""

from __future__ import annotations

import contextlib
import contextvars

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Batch dimension of activations and host batches is split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, Any]]

# Logical axis -> mesh axes (weights, then activations); None = replicated. Configs hold a copy
# (`config.sharding_rules`), so a run can re-map an axis from the command line.
DEFAULT_RULES: Rules = (
    # Weights.
    ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", None),
    ("vocab", "tensor"), ("conv_in", None), ("conv_out", "tensor"), ("codebook", None),
    ("layers", None),  # the stacked blocks of `denoiser.scan_layers`
    # Activations.
    ("act_batch", ("data", "fsdp")), ("act_len", None), ("act_embed", None),
    ("act_heads", "tensor"), ("act_vocab", "tensor"),
)


def _resolve_sizes(sizes: dict[str, int], total: int, what: str) -> tuple[int, ...]:
  """Replaces a single -1 by whatever is left; checks that the product is `total`."""
  values = [int(sizes[a]) for a in MESH_AXES]
  if any(v == 0 or v < -1 for v in values):
    raise ValueError(f"mesh: {what} sizes must be positive or -1, got {dict(zip(MESH_AXES, values))}")
  if values.count(-1) > 1:
    raise ValueError(f"mesh: at most one {what} axis may be -1, got {dict(zip(MESH_AXES, values))}")
  known = math.prod(v for v in values if v != -1)
  if -1 in values:
    if total % known:
      raise ValueError(f"mesh: {what} sizes {dict(zip(MESH_AXES, values))} do not divide "
                       f"{total} devices")
    values[values.index(-1)] = total // known
  if math.prod(values) != total:
    raise ValueError(f"mesh: {what} sizes {dict(zip(MESH_AXES, values))} need "
                     f"{math.prod(values)} devices but {total} are available")
  return tuple(values)


def mesh_shape(mesh_cfg, num_devices: int, num_slices: int = 1):
  """Returns (ici_shape, dcn_shape) for the config's mesh on `num_devices` devices."""
  dcn = {a: int(mesh_cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES}
  dcn_shape = _resolve_sizes(dcn, num_slices, "dcn")
  if num_devices % num_slices:
    raise ValueError(f"mesh: {num_devices} devices do not split into {num_slices} slices")
  ici = {a: mesh_cfg.get(a, 1) for a in MESH_AXES}
  ici_shape = _resolve_sizes(ici, num_devices // num_slices, "per-slice")
  return ici_shape, dcn_shape


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh described by `mesh_cfg`.

  `mesh_cfg` has sizes `data, fsdp, tensor` (one may be -1) and optional `dcn_data, dcn_fsdp,
  dcn_tensor` for multi-slice / multi-node jobs, where the product of dcn sizes is the number of
  slices (granules: TPU slices or GPU hosts).
  """
  devices = list(jax.devices() if devices is None else devices)
  num_slices = math.prod(int(mesh_cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES
                         if int(mesh_cfg.get(f"dcn_{a}", 1)) != -1)
  ici_shape, dcn_shape = mesh_shape(mesh_cfg, len(devices), num_slices)
  if num_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices=devices, allow_split_physical_axes=True)
  else:
    try:
      device_array = mesh_utils.create_device_mesh(ici_shape, devices=devices,
                                                   allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      # Unknown topologies (fake CPU devices, some GPU hosts): plain row-major order.
      device_array = np.asarray(devices).reshape(ici_shape)
  return Mesh(device_array, MESH_AXES)


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
  """The logical->mesh rules of a config (lists from the command line become tuples)."""
  rules = config.get("sharding_rules", None) or DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ValueError(f"sharding_rules: each rule is (logical_name, mesh_axes), got {rule!r}")
    name, axes = rule
    if isinstance(axes, list):
      axes = tuple(axes)
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"sharding_rules: {name!r} maps to unknown mesh axis {axis!r}; "
                         f"mesh axes are {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def logical_to_shardings(tree, mesh: Mesh, rules: Rules):
  """NamedShardings for a pytree whose leaves may be boxed with logical axis names.

  Leaves that are not `nn.LogicallyPartitioned` (step counters, PRNG keys, unboxed arrays)
  are replicated. A dimension that the mesh axes of its rule do not divide (the 3 output
  channels of an image decoder on a tensor axis of 2, say) is replicated instead of failing, so
  tiny models run on any mesh; large models are unaffected.
  """
  specs = nn.get_partition_spec(tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))

  def fit(sharding, subtree):
    shapes = [np.shape(leaf) for leaf in jax.tree.leaves(subtree)]
    if not isinstance(sharding, NamedSharding) or len(shapes) != 1:
      return sharding
    return NamedSharding(mesh, _divisible_spec(sharding.spec, shapes[0], mesh))

  return jax.tree.map(fit, shardings, tree)


def _divisible_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with every dimension the mesh does not divide evenly set to None."""
  out = []
  for dim, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None or axes is P.UNCONSTRAINED:
      out.append(axes)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    ways = math.prod(mesh.shape[a] for a in names)
    out.append(axes if shape[dim] % ways == 0 else None)
  return P(*out)


UNCONSTRAINED = P.UNCONSTRAINED  # A `constrain` name: leave this dimension to XLA.

_CURRENT_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("mdd_mesh",
                                                                              default=None)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules):
  """While tracing inside it: the activations' logical constraints (`constrain`) and the
  sharded loss use `mesh`, and the logical axis `rules` are active. Parameters and batches are
  placed by the jitted functions' shardings (`logical_to_shardings`, `shard_batch`)."""
  token = _CURRENT_MESH.set(mesh)
  try:
    with nn.logical_axis_rules(list(rules)):
      yield
  finally:
    _CURRENT_MESH.reset(token)


def current_mesh() -> Mesh | None:
  """The mesh of the enclosing `mesh_context`, or None."""
  return _CURRENT_MESH.get()


def constrain(x: jax.Array, names) -> jax.Array:
  """Sharding constraint on an activation by its logical axis `names` (or `UNCONSTRAINED`:
  that dimension as XLA likes), under the enclosing `mesh_context` (a no-op outside one). A
  dimension its mesh axes do not divide is replicated, as in `logical_to_shardings`."""
  mesh = current_mesh()
  if mesh is None:
    return x
  spec = [n if n is UNCONSTRAINED else nn.logical_to_mesh_axes((n,))[0] for n in names]
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, _divisible_spec(P(*spec), np.shape(x), mesh)))


def create_sharded_state(init_fn: Callable[..., Any], mesh: Mesh, rules: Rules, *args):
  """`eval_shape` -> partition specs -> `jit(init, out_shardings)`.

  Returns (state, shardings); no full copy of the state ever lives on one device.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_to_shardings(abstract, mesh, rules)
  with mesh_context(mesh, rules):
    state = jax.jit(init_fn, out_shardings=shardings)(*args)
  return state, shardings


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Sharding for arrays whose leading dim is the (global) batch."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_size_divisor(mesh: Mesh) -> int:
  """Number of batch shards: the global batch must be a multiple of this."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's host batch into global arrays sharded over the batch axes.

  Each process passes its own slice (its per-process batch); with one process this is the
  whole batch. Non-array entries (strings) are dropped: they never enter a jitted step.
  """
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in ("U", "S", "O"):
      continue
    sharding = batch_sharding(mesh, value.ndim)
    if jax.process_count() == 1:
      divisor = batch_size_divisor(mesh)
      if value.shape[0] % divisor:
        raise ValueError(f"batch: '{name}' has batch size {value.shape[0]}, not a multiple of the "
                         f"{divisor} batch shards of the mesh {dict(mesh.shape)}")
      out[name] = jax.device_put(value, sharding)
    else:
      out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out
