"""The EMA of TrainState: warm-up schedule and values after a few updates."""

import jax.numpy as jnp
import numpy as np
import optax

from mdd.train import state as state_lib


def test_ema_decay_warms_up_then_caps():
  steps = jnp.arange(20000)
  d = np.asarray(state_lib.ema_decay_at(0.999, steps))
  np.testing.assert_allclose(d[:3], [0.1, 2 / 11, 3 / 12], rtol=1e-6)
  assert np.all(np.diff(d) >= 0) and d.max() == np.float32(0.999)
  # After 600 updates the initial weights keep a negligible share (constant 0.999: 55%).
  assert np.prod(d[:600]) < 1e-2 < 0.999 ** 600


def test_ema_follows_the_schedule():
  params = {"w": jnp.array(0.0)}
  state = state_lib.TrainState.create(params, optax.sgd(1.0), ema_decay=0.999)
  ema, p = 0.0, 0.0
  for step in range(3):
    state = state.apply_gradients({"w": jnp.array(-1.0)})  # w += 1 each step
    p += 1.0
    d = min(0.999, (1 + step) / (10 + step))
    ema = d * ema + (1 - d) * p
    np.testing.assert_allclose(float(state.ema_params["w"]), ema, rtol=1e-6)
  np.testing.assert_allclose(float(state.eval_params["w"]), ema, rtol=1e-6)
