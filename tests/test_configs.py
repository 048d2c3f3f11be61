"""Every experiment config and every documented arg loads, validates, has the sections its
stages read, and builds its models (shapes only, no weights); bad args fail in one line."""

import re

import jax
import numpy as np
import pytest

import configs
from mdd import stages
from mdd import validate
from mdd.models import system as system_lib
from mdd.models import tokenizer as tokenizer_lib

# Every arg the experiment files document (their docstrings and the README).
CASES = [
    "shapes_tiny", "shapes_tiny:runlocal", "shapes_tiny:long", "shapes_tiny:vocab=14",
    "shapes_tiny:runlocal,vocab=10", "shapes_gpu", "shapes_gpu:vocab=18", "shapes_gpu:runlocal",
    "shapes_gpu:vocab=18,noise=12", "shapes_tiny:vocab=12,noise=12",
    "t2i", "t2i:runlocal", "t2i:res=256,variant=B", "t2i:res=512,variant=L", "t2i:res=512,variant=XL,source=tfds",
    "t2i:res=1024,variant=1B", "t2i:res=256,variant=B,text=t5", "t2i:text=byte,vocab=18",
    "t2i:res=256,variant=1B,source=arrayrecord", "t2i:runlocal,source=arrayrecord",
]


def _runnable(spec):
  config = configs.load(spec)
  if config.data.source == "folder":
    # Real-data configs need the user's folder; without it validation must say so.
    assert any(p.startswith("data.folder: required") for p in validate.validate(config))
    config.data.folder = "my_images"
  if config.data.source == "tfds":
    config.data.tfds_name = "my_dataset"
  if config.data.source == "arrayrecord":
    config.data.records = "my_records"
  # The real benchmarks' files are the user's too, and checked before anything trains.
  needed = {"geneval": ("metadata_file",), "dpg": ("prompts_dir",), "fid": ("weights", "ref_stats")}
  for name in config.eval.evals:
    for field in needed.get(name, ()):
      if config.eval[name][field]:  # Set by the config itself (e.g. FID against the dataset).
        continue
      assert any(p.startswith(f"eval.{name}.{field}: required") for p in validate.validate(config))
      config.eval[name][field] = f"my_{field}"
  return config


@pytest.mark.parametrize("spec", CASES)
def test_config_validates_with_every_section_its_stages_read(spec):
  config = _runnable(spec)
  assert validate.validate(config) == [], spec
  assert stages.stages_of(config) == tuple(stages.STAGES)
  for stage in stages.STAGES:
    for section in stages.SECTIONS[stage]:
      assert section in config, (spec, stage, section)


def test_documented_args_are_tested():
  """The args each config's docstring lists appear in CASES, so none goes untested."""
  for name in ("shapes_tiny", "shapes_gpu", "t2i"):
    doc = __import__(f"configs.{name}", fromlist=["x"]).__doc__
    for arg in re.findall(rf"configs/{name}\.py:([\w=,]+)", doc):
      assert f"{name}:{arg}" in CASES, f"{name}:{arg} is documented but not tested"


@pytest.mark.parametrize("spec", ["shapes_tiny", "shapes_gpu", "t2i:runlocal",
                                  "t2i:res=512,variant=L"])
def test_config_builds_tokenizer_and_denoiser(spec):
  config = _runnable(spec)
  config.denoiser.attention_impl = ""  # cuDNN attention cannot even be traced without a GPU
  if config.text.kind in ("minilm", "t5"):
    config.text.kind = "byte"  # the frozen encoders need weights on disk; tested elsewhere
  tokenizer = tokenizer_lib.tokenizer_from_config(config.tokenizer)
  assert tokenizer.num_codes == config.tokenizer.model.vocab_size
  v = tokenizer.num_codes
  table = np.arange(v, dtype=np.int32)[:, None]  # a K=1 table: shapes are all that matter here
  system = system_lib.system_from_config(config, vocab_size=v, neighbours=table,
                                         neighbour_weights=np.ones_like(table, np.float32))
  shapes = jax.eval_shape(system.init_params, jax.random.key(0))
  assert "denoiser" in shapes


@pytest.mark.parametrize("spec,message", [
    ("shapes_tiny:lonng", r"configs/shapes_tiny.py: unknown arg 'lonng'; known: long, "),
    ("shapes_tiny:vocab", r"arg 'vocab' needs a value"),
    ("shapes_tiny:vocab=big", r"arg vocab='big' is not an int"),
    ("t2i:res=300", r"res=300 is not one of"),
    ("nonexistent", r"no experiment config named 'nonexistent'"),
])
def test_bad_args_are_one_line_errors(spec, message):
  with pytest.raises(ValueError, match=message) as error:
    configs.load(spec)
  assert "\n" not in str(error.value)


def test_a_config_missing_a_section_is_reported():
  config = configs.load("t2i:runlocal")
  del config["sample"]
  problems = validate.validate(config)
  assert any("the sample stage reads config sections ['sample']" in p for p in problems)
  config.mode = "train"
  assert validate.validate(config) == []


def test_pixel_noise_is_checked_and_belongs_to_shapegen():
  config = configs.load("shapes_gpu:noise=12")
  assert config.data.noise_std == 12.0 and validate.validate(config) == []
  config.data.noise_std = -1.0
  assert "data.noise_std=-1.0: must be >= 0" in validate.validate(config)
  config.data.noise_std = 8.0
  config.data.source = "arrayrecord"
  config.data.records = "shards/"
  assert any(p.startswith("data.noise_std=8.0: adds noise to ShapeGen images only")
             for p in validate.validate(config))
