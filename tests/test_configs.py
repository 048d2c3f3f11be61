"""Every experiment config loads, validates, and builds its models (shapes only, no weights)."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from mdd import config_validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


CASES = [("shapes_tiny", None), ("shapes_tiny", "runlocal"), ("shapes_tiny", "v14"),
         ("shapes_gpu", None), ("shapes_gpu", "v18"), ("t2i", None), ("t2i", "res=512,variant=L")]


@pytest.mark.parametrize("name,arg", CASES)
def test_config_validates(name, arg):
  config = load_config(name, arg)
  if config.data.source == "folder":
    # Real-data configs need the user's folder; without it validation must say so.
    assert any(p.startswith("data.folder: required") for p in config_validation.validate(config))
    config.data.folder = "my_images"
  assert config_validation.validate(config) == [], (name, arg)


@pytest.mark.parametrize("name,arg", [("shapes_tiny", None), ("shapes_gpu", None)])
def test_config_builds_tokenizer_and_denoiser(name, arg):
  from mdd.models import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from mdd.train import denoiser_task  # pylint: disable=import-outside-toplevel
  config = load_config(name, arg)
  config.denoiser.attention_impl = ""  # cuDNN attention cannot even be traced without a GPU
  tokenizer = tokenizer_lib.tokenizer_from_config(config.tokenizer)
  assert tokenizer.num_codes == config.tokenizer.model.vocab_size
  v = tokenizer.num_codes
  table = np.arange(v, dtype=np.int32)[:, None]  # a K=1 table: shapes are all that matter here
  system = denoiser_task.system_from_config(config, vocab_size=v, neighbours=table,
                                            neighbour_weights=np.ones_like(table, np.float32))
  shapes = jax.eval_shape(system.init_params, jax.random.key(0))
  assert "denoiser" in shapes
