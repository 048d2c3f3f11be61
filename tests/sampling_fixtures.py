"""A run folder that sampling and evaluation can load, without training: the tokenizer and the
denoiser at their initial weights, saved in the layout the trainers write (orbax checkpoints of
the train states' parameter subtrees, `tokenizer_config.json`, `neighbours.npz`, `config.json`).

Seconds instead of the minutes a trained pipeline takes; what sampling computes from the weights
(the mesh, the processes, the files) does not depend on how good they are.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import configs
from mdd import workdir as workdir_lib
from mdd.models import tokenizer as tokenizer_lib
from mdd.objectives import neighbours as neighbours_lib
from mdd.utils import checkpoints
from mdd.utils import fileio


def tiny_config(**mesh):
  """`shapes_tiny:runlocal` with a 2-block denoiser, 4 sampler steps and small batches."""
  config = configs.load("shapes_tiny:runlocal")
  config.denoiser.depth = 2
  config.sampler.num_steps = 4
  config.sample.batch_size = 8
  config.eval.shapes_geneval.batch_size = 8
  for axis, size in mesh.items():
    config.mesh[axis] = size
  return config


def _save(directory, step, state):
  manager = checkpoints.manager(directory, async_save=False, item_names=("default",))
  manager.save(step, args=ocp.args.Composite(default=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()


def random_params(abstract, seed: int):
  """Parameters of the shapes (and logical boxes) of `abstract`, drawn with NumPy: norm scales
  1, biases 0, kernels normal / sqrt(fan-in), tables normal. No init program to compile (each
  model's takes seconds on CPU) and varied enough that different tokens decode to different
  images."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(k, "key", getattr(k, "name", "")) for k in path]
    name = [n for n in names if n != "value"][-1]
    if name == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    if name == "bias":
      return np.zeros(leaf.shape, leaf.dtype)
    values = rng.standard_normal(leaf.shape)
    if name == "kernel" and len(leaf.shape) > 1:
      values /= np.sqrt(np.prod(leaf.shape[:-1]))
    return values.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def random_init(module, *args, seed: int = 0, **kwargs):
  """`module.init(key, *args, **kwargs)["params"]` in shape and logical boxes, drawn by
  `random_params`: for tests that need some weights, not the initialisers' (whose eager or
  jitted init costs seconds of compile per model on CPU)."""
  abstract = jax.eval_shape(lambda key: module.init(key, *args, **kwargs)["params"],
                            jax.random.key(0))
  return random_params(abstract, seed)


def make_workdir(root, config) -> str:
  """Writes an untrained run of `config` at `root` (tokenizer step 1, denoiser step 2); returns
  the folder. The denoiser's EMA differs from its raw parameters, so loading the wrong subtree
  shows."""
  run = workdir_lib.Workdir(str(root))
  fileio.makedirs(run.tokenizer_dir)
  height, width = workdir_lib.image_hw(config.data)
  model = tokenizer_lib.tokenizer_from_config(config.tokenizer)
  tok_params = random_params(jax.eval_shape(lambda rng: model.init(
      rng, jnp.zeros((1, height, width, 3), jnp.uint8))["params"], jax.random.key(1)), 1)
  _save(run.checkpoints_dir("tokenizer"), 1,
        {"generator": {"params": tok_params, "ema_params": tok_params}})
  codebook = None
  if model.quantizer == "vq":
    codebook = np.asarray(jax.jit(lambda p: model.apply({"params": p}, method="codebook"))(
        tok_params))
  neighbours_lib.save_table(run.neighbours_file,
                            neighbours_lib.table_from_config(config.tokenizer, codebook))
  fileio.write_json_atomic(run.tokenizer_config_file, json.loads(config.to_json_best_effort()))
  system = run.denoiser_system(config)
  abstract = jax.eval_shape(system.init_params, jax.random.key(2))
  _save(run.checkpoints_dir("denoiser"), 2, {"params": random_params(abstract, 2),
                                             "ema_params": random_params(abstract, 3)})
  run.save_run_config(config)
  return run.root
