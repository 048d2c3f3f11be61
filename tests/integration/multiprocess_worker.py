"""Worker for tests/test_multiprocess.py: one of N CPU processes in one jax.distributed job.

Each process contributes its slice of a global batch through `sharding.shard_batch` and builds
the sharded state with `create_sharded_state`; a jitted reduction then spans all processes.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"


def main():
  from mdd import main as main_lib  # pylint: disable=import-outside-toplevel
  main_lib.initialize_distributed()
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mdd.utils import sharding  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1)))
  per_process = 4
  pid = jax.process_index()
  rows = np.arange(pid * per_process, (pid + 1) * per_process, dtype=np.float32)
  local = {"x": np.stack([rows, 10 * rows], axis=1)}
  batch = sharding.shard_batch(local, mesh)
  total = jax.jit(lambda b: jnp.sum(b["x"]))(batch)

  init = lambda rng: {"w": nn.LogicallyPartitioned(  # noqa: E731
      jax.random.normal(rng, (16, 4)), ("embed", "mlp"))}
  state, _ = sharding.create_sharded_state(init, mesh, sharding.DEFAULT_RULES, jax.random.key(0))
  w_sum = jax.jit(lambda s: jnp.sum(s["w"].value))(state)
  # The result goes to a file the test names: gloo's C++ logging shares stdout and can land on the
  # same line as a printed result.
  with open(os.environ["MDD_WORKER_RESULT"], "w") as f:
    json.dump({
        "process": pid, "processes": jax.process_count(), "devices": jax.device_count(),
        "global_shape": list(batch["x"].shape), "total": float(total),
        "w_spec": str(state["w"].value.sharding.spec), "w_sum": float(w_sum),
    }, f)


if __name__ == "__main__":
  sys.exit(main())
