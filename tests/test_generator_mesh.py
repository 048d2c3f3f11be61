"""mdd.inference.generator on the mesh: the denoiser's parameters restored straight into the
shardings the train loop gives them (the EMA copy), and a mesh that does not fit the devices
refused in one line."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
import sampling_fixtures  # noqa: E402
from mdd.inference import generator as generation  # noqa: E402
from mdd.train import denoiser as denoiser_train  # noqa: E402
from mdd.train import loop  # noqa: E402
from mdd.utils import sharding  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = sampling_fixtures.tiny_config(data=2, fsdp=2, tensor=2)
  return config, sampling_fixtures.make_workdir(tmp_path_factory.mktemp("run"), config)


def test_params_land_in_their_training_shardings(run):
  config, workdir = run
  gen = generation.Generator.from_workdir(workdir)  # the run's config: its mesh
  assert dict(gen.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  # The train loop's layout of the same state on the same mesh.
  task = denoiser_train.make_task(config, gen.system, lambda step: iter(()))
  target, _ = loop.abstract_state(task, gen.mesh, sharding.rules_from_config(config))
  expected = nn.unbox(target.ema_params)
  assert jax.tree.structure(expected) == jax.tree.structure(gen.params)
  for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(gen.params)):
    assert got.sharding == want.sharding and got.shape == want.shape
  head = gen.params["denoiser"]["head"]["kernel"]  # [D, V]: embed -> fsdp, vocab -> tensor
  assert head.sharding.spec == P("fsdp", "tensor")
  assert len(head.sharding.device_set) == 8
  assert {s.data.shape for s in head.addressable_shards} == {(head.shape[0] // 2,
                                                             head.shape[1] // 2)}
  # The EMA copy, not the raw parameters.
  abstract = jax.eval_shape(gen.system.init_params, jax.random.key(0))
  ema = nn.unbox(sampling_fixtures.random_params(abstract, 3))
  np.testing.assert_array_equal(np.asarray(head), ema["denoiser"]["head"]["kernel"])


def test_a_mesh_that_does_not_fit_the_devices_is_one_line(run):
  config, workdir = run
  config = config.copy_and_resolve_references()
  config.mesh.data = 4  # 4 x 2 x 2 = 16 devices, 8 here
  with pytest.raises(ValueError) as error:
    generation.Generator.from_workdir(workdir, config)
  message = str(error.value)
  assert "\n" not in message and "config.mesh" in message and "16 devices" in message, message


def test_a_sampler_batch_out_of_accelerator_memory_is_one_line_naming_the_batch(run,
                                                                                monkeypatch):
  _, workdir = run
  gen = generation.Generator.from_workdir(workdir)

  def out_of_memory(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68.72GiB.\n"
                       "BufferAssignment OOM Debugging ...")
  monkeypatch.setattr(generation.sampler_lib, "sample", out_of_memory)
  with pytest.raises(generation.SamplerOutOfMemoryError) as error:
    gen.generate(["a red circle"], [0], pad_to=8)
  message = str(error.value)
  grid = int(np.prod(gen.grid_shape))
  assert "\n" not in message and "sample.batch_size" in message, message
  # The retry at half the batch (the ablation's evaluations) still recognises it.
  assert "RESOURCE_EXHAUSTED" in message and f"8 images of {grid} tokens" in message, message

  def other_failure(*args, **kwargs):
    raise RuntimeError("INTERNAL: something else")
  monkeypatch.setattr(generation.sampler_lib, "sample", other_failure)
  with pytest.raises(RuntimeError, match="INTERNAL"):
    gen.generate(["a red circle"], [0])


@pytest.mark.parametrize("error, code, one_line", [
    ("generation.SamplerOutOfMemoryError('sampling 8 images ran out (RESOURCE_EXHAUSTED)')", 2,
     True),
    ("MemoryError('the host')", 1, False)])
def test_the_console_entry_prints_a_sampler_out_of_memory_as_one_line_not_the_host_s(
    error, code, one_line):
  script = ("import absl.app\nfrom mdd import main\nfrom mdd.inference import generator as "
            "generation\n"
            f"def fail(*args, **kwargs):\n  raise {error}\n"
            "absl.app.run = fail\nmain.run()\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, MDD_TRACEBACK="0"))
  assert done.returncode == code, done.stderr
  lines = done.stderr.strip().splitlines()
  if one_line:
    assert lines == ["mdd: error: SamplerOutOfMemoryError: sampling 8 images ran out "
                     "(RESOURCE_EXHAUSTED)"], done.stderr
  else:
    assert "Traceback" in done.stderr and lines[-1] == "MemoryError: the host"
