"""The analytic FLOP count against XLA's own count of the same forward."""

import jax
import jax.numpy as jnp
import pytest

from mdd import defaults
from mdd.models import denoiser as denoiser_lib
from mdd.models import flops
from mdd.models import system as system_lib
from mdd.models.text import trainable


def _xla_flops(fn, *args) -> float:
  """XLA's FLOP count of the compiled `fn`; `args` may be abstract (only shapes matter)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


@pytest.mark.parametrize("patch_size", [1, 2])
def test_denoiser_forward_matches_xla_count(patch_size):
  # Wide enough that the products dominate XLA's count (it also counts elementwise ops).
  model = denoiser_lib.Denoiser(vocab_size=512, width=256, depth=2, num_heads=4, mlp_dim=1024,
                                patch_size=patch_size)
  grid, text_len, text_dim = (8, 12), 16, 96
  # Shapes only: nothing to initialise or run before the compile.
  params = jax.eval_shape(lambda: denoiser_lib.init_params(model, jax.random.key(0),
                                                           text_dim=text_dim))
  tokens = jax.ShapeDtypeStruct((1,) + grid, jnp.int32)
  text = jax.ShapeDtypeStruct((1, text_len, text_dim), jnp.float32)
  counted = _xla_flops(lambda p, t, x: model.apply({"params": p}, t, x, jnp.ones((1, text_len),
                                                                                 bool),
                                                   jnp.full((1,), 0.5)), params, tokens, text)
  analytic = flops.denoiser_forward_flops(model, grid, text_len, text_dim)
  assert analytic == pytest.approx(counted, rel=0.05)
  assert analytic < counted  # XLA adds the elementwise ops; the products alone are fewer.


def test_text_encoder_forward_matches_xla_count():
  enc = trainable.ByteEncoder(width=256, depth=2, num_heads=4, mlp_dim=1024)
  ids = jax.ShapeDtypeStruct((1, 48), jnp.int32)  # Shapes only, as above.
  mask = jnp.ones((1, 48), bool)
  params = jax.eval_shape(enc.init, jax.random.key(1), ids, mask)["params"]
  counted = _xla_flops(lambda p, i: enc.apply({"params": p}, i, mask)[0], params, ids)
  assert flops.text_encoder_forward_flops(enc, 48) == pytest.approx(counted, rel=0.05)


def test_train_step_flops_is_three_forwards_and_counts_the_draft():
  config = defaults.base_config()
  config.denoiser.variant = "mu"
  config.loss.type = "ce"
  config.masking.edit_fraction = 0.0
  system = system_lib.system_from_config(config, vocab_size=256)
  fwd = (flops.denoiser_forward_flops(system.denoiser, (4, 4), 10, system.text_dim)
         + flops.text_encoder_forward_flops(system.text_encoder, 10))
  assert flops.train_step_flops(system, 3, (4, 4), 10) == 3 * 3 * fwd
  config.masking.edit_fraction, config.masking.edit_source = 0.1, "draft"
  draft = system_lib.system_from_config(config, vocab_size=256)
  extra = flops.denoiser_forward_flops(draft.denoiser, (4, 4), 10, draft.text_dim)
  assert flops.train_step_flops(draft, 3, (4, 4), 10) == 3 * (3 * fwd + extra)
