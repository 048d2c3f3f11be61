"""Test set-up: CPU only, 8 fake host devices, set before JAX is imported anywhere."""

import os

import pytest

os.environ["JAX_PLATFORMS"] = "cpu"
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# Keep TensorFlow (used by TFDS) off any accelerator and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


_INTEGRATION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration")


_OPT_IN = ("slow", "gpu", "tpu")


def pytest_collection_modifyitems(config, items):
  """Everything under tests/integration/ carries the `integration` marker; tests marked slow,
  gpu or tpu run only when the `-m` expression names that marker."""
  for item in items:
    if str(item.fspath).startswith(_INTEGRATION_DIR + os.sep):
      item.add_marker(pytest.mark.integration)
  expression = config.getoption("markexpr") or ""
  left_out = [m for m in _OPT_IN if m not in expression]
  keep, deselected = [], []
  for item in items:
    (deselected if any(item.get_closest_marker(m) for m in left_out) else keep).append(item)
  if deselected:
    config.hook.pytest_deselected(items=deselected)
    items[:] = keep


@pytest.fixture
def check_get_batch():
  """`check(source, order)`: `source.get_batch(order)` equals stacking `source[i]` in order."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from mdd.data import loader  # pylint: disable=import-outside-toplevel

  def check(source, order):
    gathered = source.get_batch(np.asarray(order))
    stacked = loader.stack_examples([source[int(i)] for i in order])
    assert sorted(gathered) == sorted(stacked)
    for key, value in stacked.items():
      np.testing.assert_array_equal(gathered[key], value, err_msg=key)
      assert gathered[key].dtype.kind == value.dtype.kind, key

  return check

