"""Worker for test_multiprocess.py: one of 2 CPU processes training a toy model on the grain
pipeline, stopped after 6 steps and resumed to 10 from the checkpoint's input position.

Writes, per run, the example indices of the batches this process used and whether the resume
restored the pipeline's iterator state.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"


class IndexSource:
  """Example i: its index and a regression pair drawn from it."""

  def __init__(self, n=37):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    import numpy as np  # pylint: disable=import-outside-toplevel
    x = np.random.default_rng(i).normal(size=8).astype(np.float32)
    return {"index": np.int32(i), "x": x, "y": np.tanh(x[:1])}


def main():
  from mdd import main as main_lib  # pylint: disable=import-outside-toplevel
  main_lib.initialize_distributed()
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mdd.data import loader  # pylint: disable=import-outside-toplevel
  from mdd.train import loop  # pylint: disable=import-outside-toplevel
  from mdd.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from mdd.utils import sharding  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1)))
  pid, count = jax.process_index(), jax.process_count()
  model = nn.Dense(1)
  tx = state_lib.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-2, warmup_steps=1, num_steps=10, weight_decay=0.0, grad_clip=1.0)))
  used, restores = [], []

  class Logged(loader.MappedIterator):
    def set_state(self, state):
      restores.append(state)
      super().set_state(state)

  def log(batch):
    used.append(batch["index"].tolist())
    return batch

  def make_batches(start_step):
    return Logged(loader.batch_iterator(IndexSource(), batch_size=4, seed=11,
                                        start_step=start_step, process_index=pid,
                                        process_count=count), log)

  def train_step(state, batch, rng):
    del rng
    loss_fn = lambda p: jnp.mean((model.apply({"params": p}, batch["x"]) - batch["y"]) ** 2)  # noqa: E731
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}

  results = {}
  for num_steps in (6, 10):
    used.clear()
    task = loop.Task(name="toy", num_steps=num_steps, train_step=train_step,
                     make_batches=make_batches,
                     init_state=lambda rng: state_lib.TrainState.create(
                         model.init(rng, jnp.zeros((1, 8)))["params"], tx))
    cfg = ml_collections.ConfigDict(dict(log_every=2, ckpt_every=3, async_checkpoints=False,
                                         tensorboard=False))
    loop.train(task, cfg, os.environ["MDD_WORKDIR"], mesh, sharding.DEFAULT_RULES, seed=0)
    results[num_steps] = list(used)  # Includes the batches prefetched past the last step.
  with open(os.environ["MDD_WORKER_RESULT"], "w") as f:
    json.dump({"process": pid, "first": results[6], "resumed": results[10],
               "restored_states": restores}, f)


if __name__ == "__main__":
  sys.exit(main())
