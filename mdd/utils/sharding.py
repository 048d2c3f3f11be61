"""Device mesh, logical-axis rules, and shardings for train state and host batches.

Weights carry logical axis names (`embed, mlp, heads, kv, vocab, conv_in, conv_out, codebook`),
activations their own (`act_batch, act_len, act_embed, act_heads, act_vocab`). The config maps
them to the mesh axes (`data, fsdp, tensor`), so the same model code runs on 1 CPU, 8 fake CPU
devices, one GPU or a TPU pod; only the mesh and the rules change.

Processes (a `jax.distributed` job): `abstract_on_mesh` places a model's abstract parameters in
their training shardings (a checkpoint restores straight into them); `process_rows`,
`rows_to_global`, `gather_rows` and `to_host` move the rows of a batch between this process and
global arrays split over the batch axes; `is_main_process`, `sync_processes` and
`on_main_process` give a job one writer: process 0 decides and writes, the others wait for it
or receive its result.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
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


def with_shardings(abstract, shardings):
  """`abstract` (an `eval_shape` tree, leaves boxed with logical names or not) as
  `ShapeDtypeStruct`s carrying `shardings` (`logical_to_shardings` of it: a prefix of the tree,
  since a logical box collapses to one sharding)."""
  return jax.tree.map(
      lambda s, sub: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  sub),
      shardings, abstract)


def abstract_on_mesh(abstract, mesh: Mesh, rules: Rules):
  """`abstract` placed as the train loop lays the same tree out on `mesh`: for restoring a
  checkpoint straight onto the mesh."""
  return with_shardings(abstract, logical_to_shardings(abstract, mesh, rules))


# --------------------------------------------------------------------------------------------
# Rows of a global batch and the processes that feed them.


def process_rows(mesh: Mesh, num_rows: int) -> np.ndarray:
  """The sorted global rows of a batch of `num_rows` (split over the batch axes) that this
  process's devices hold; all of them with one process."""
  indices = batch_sharding(mesh).addressable_devices_indices_map((num_rows,))
  rows = set()
  for index in indices.values():
    rows.update(range(num_rows)[index[0]])
  return np.asarray(sorted(rows), np.int64)


def rows_to_global(mesh: Mesh, local_values, local_rows: np.ndarray, num_rows: int) -> jax.Array:
  """A global array [num_rows, ...] split over the batch axes, of which this process supplies
  `local_values[k]` = row `local_rows[k]` (`process_rows`)."""
  local_values = np.asarray(local_values)
  if len(local_values) != len(local_rows):
    raise ValueError(f"{len(local_values)} local values for {len(local_rows)} local rows")
  shape = (num_rows, *local_values.shape[1:])

  def rows_of(index):
    return local_values[np.searchsorted(local_rows, np.arange(num_rows)[index[0]])]

  return jax.make_array_from_callback(shape, batch_sharding(mesh, len(shape)), rows_of)


def replicated(mesh: Mesh, value) -> jax.Array:
  """`value` (the same on every process) as a global array replicated over the mesh."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, NamedSharding(mesh, P()),
                                      lambda index: value[index])


def to_host(tree):
  """Every leaf of a tree of global arrays as a NumPy array of its whole value, on every
  process (a collective with several processes: all of them call it)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def gather_rows(mesh: Mesh, local_values, local_rows: np.ndarray, num_rows: int) -> np.ndarray:
  """All `num_rows` rows on every process, from each process's own rows (`process_rows`): the
  inverse of splitting a batch over the processes."""
  if jax.process_count() == 1:
    return np.asarray(local_values)[np.argsort(local_rows)]
  return to_host(rows_to_global(mesh, local_values, local_rows, num_rows))


# --------------------------------------------------------------------------------------------
# One writer: process 0 decides and writes, the others wait for it.


def is_main_process() -> bool:
  """Whether this process writes the job's files (process 0)."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """A barrier of every process of the job (nothing with one process): what process 0 wrote
  before it is complete for whoever reads after it."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"mdd: {name}")


def on_main_process(fn: Callable[[], Any]) -> Any:
  """`fn()` run on process 0 only, its (JSON-able) result handed to every process: decisions
  that read the file system (what a resumed layout still lacks) come out the same everywhere,
  so every process runs the same collectives. `fn` itself must run no collective (the others
  are not in it). An exception of `fn` is raised on every process (as ValueError elsewhere)
  instead of leaving the others waiting."""
  if jax.process_count() == 1:
    return fn()
  error, text = None, ""
  if is_main_process():
    try:
      text = json.dumps({"value": fn()})
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, on every process)
      error, text = e, json.dumps({"error": f"{type(e).__name__}: {e}"})
  shared = json.loads(_broadcast_bytes(text.encode()).decode())
  if error is not None:
    raise error
  if "error" in shared:
    raise ValueError(f"process 0 failed: {shared['error']}")
  return shared["value"]


def _broadcast_bytes(data: bytes) -> bytes:
  """Process 0's `data` on every process (two broadcasts: the length, then the bytes)."""
  size = int(multihost_utils.broadcast_one_to_all(np.asarray([len(data)], np.int32))[0])
  buffer = np.zeros(size, np.uint8)
  if is_main_process():
    buffer[:] = np.frombuffer(data, np.uint8)
  return bytes(multihost_utils.broadcast_one_to_all(buffer))
