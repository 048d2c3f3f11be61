"""The memory plan (`--config.mode=plan`, mdd/plan.py) on 8 fake CPU devices.

State bytes of every denoiser variant come from abstract shapes only (nothing is compiled or
allocated for mu .. 3B); one compile of the B variant's train step checks the analytic
temporaries and total against XLA's memory analysis of the same step.
"""

import pytest

import configs
from mdd import plan as plan_lib
from mdd.models import denoiser as denoiser_lib

VOCAB = 16384
MESHES = {"fsdp": dict(data=1, fsdp=8, tensor=1), "data": dict(data=8, fsdp=1, tensor=1)}


def _config(variant: str, mesh: str, batch_size: int = 8):
  config = configs.load("t2i:runlocal")  # 64 px, f=4: a 16 x 16 token grid; byte text
  config.mode = "plan"
  config.denoiser.variant = variant
  config.denoiser.vocab_size = VOCAB
  config.denoiser.scan_layers = True  # one block in the program: a shorter compile
  config.denoiser_train.batch_size = batch_size
  config.mesh.update(MESHES[mesh])
  return config


def _expected_denoiser_bytes(variant: str, mesh: str) -> int:
  """The denoiser's fp32 parameter count x 4 bytes / the fsdp ways. The default rules split every
  weight along its `embed` axis except the q/k norms' scales ([head_dim], 4 per block), which
  every device holds whole."""
  count = denoiser_lib.param_count(variant, VOCAB, text_dim=128)
  if mesh == "data":
    return 4 * count
  v = denoiser_lib.VARIANTS[variant]
  replicated = 4 * v.depth * (v.width // v.num_heads)
  return 4 * ((count - replicated) // 8 + replicated)


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_state_bytes_of_every_variant_from_abstract_shapes(tmp_path, mesh):
  for variant in denoiser_lib.VARIANTS:
    plan, _ = plan_lib.denoiser_plan(_config(variant, mesh), str(tmp_path))
    state = plan["state"]
    assert plan["param_bytes"]["denoiser"] == _expected_denoiser_bytes(variant, mesh), variant
    params = state["params"]
    assert params == sum(plan["param_bytes"].values())
    # AdamW: mu and nu of every parameter, plus a few int32 step counters.
    assert 0 < state["optimizer"] - 2 * params <= 64, (variant, state)
    assert state["ema"] == params, variant  # denoiser_train.ema_decay > 0 in this config


def test_no_ema_term_without_ema(tmp_path):
  config = _config("S", "data")
  config.denoiser_train.ema_decay = 0.0
  plan, _ = plan_lib.denoiser_plan(config, str(tmp_path))
  assert plan["state"]["ema"] == 0
  assert plan["analytic_temp"]["update"] == plan["state"]["params"] + plan["state"]["optimizer"]


def test_remat_keeps_only_block_inputs(tmp_path):
  plans = {}
  for remat in (False, True):
    config = _config("L", "data", batch_size=64)
    config.denoiser.remat = remat
    plans[remat], _ = plan_lib.denoiser_plan(config, str(tmp_path))
  full, remat = plans[False]["analytic_temp"], plans[True]["analytic_temp"]
  assert remat["activations"] * 4 < full["activations"]
  assert remat["update"] == full["update"]


@pytest.mark.parametrize("mesh,batch_size", [
    ("data", 8), pytest.param("fsdp", 16, marks=pytest.mark.slow)])  # A second ~30 s compile.
def test_b_variant_agrees_with_the_compiled_step(tmp_path, mesh, batch_size):
  """The plan's numbers for B within 10% of XLA's memory analysis of the compiled step (1 or 2
  examples per device)."""
  config = _config("B", mesh, batch_size)
  plan = plan_lib.finish_plan(*plan_lib.denoiser_plan(config, str(tmp_path)), 80 * plan_lib.GIB,
                              "test", compile_step=True)
  compiled = plan["compiled"]
  assert compiled is not None and plan["total_source"] == "compiled"
  # The step's arguments are the state and the batch, exactly as the plan counts them (+ the
  # int32 step number).
  assert compiled["argument"] - sum(plan["state"].values()) == 4
  analytic_temp = sum(plan["analytic_temp"].values())
  assert abs(analytic_temp / compiled["temp"] - 1) < 0.10, (plan["analytic_temp"], compiled)
  assert abs(plan["analytic_total"] / compiled["total"] - 1) < 0.10
  assert plan["fits"] and "temporaries (XLA)" in plan_lib.format_table(plan)


def test_refuses_what_cannot_fit_naming_the_largest_term(tmp_path):
  config = _config("3B", "fsdp")
  config.plan.device_memory_gb = 4.0
  config.plan.tokenizer = False
  with pytest.raises(ValueError, match=r"^does not fit: \d+\.\d GiB per device > 4 GiB; "
                     r"largest term: optimizer state \d+\.\d GiB"):
    plan_lib.run(config, str(tmp_path))
  # Written before the refusal, without a compile: the state alone cannot fit.
  record = plan_lib.read_plan(str(tmp_path))
  assert record["fits"] is False and record["compiled"] is None
  assert record["total_source"] == "state (no compile)"
