"""mdd.objectives.masking: schedules, exact mask counts, complementary masks, edit corruption, weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd.objectives import masking

MASK = 40  # V = 40 codes, mask id 40.


def _tokens(batch=8, h=6, w=5, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, MASK, (batch, h, w)), jnp.int32)


def _table():
  v = np.arange(MASK)
  nbr = np.stack([v, (v + 1) % MASK, (v + 2) % MASK, np.full(MASK, -1)], 1).astype(np.int32)
  nw = np.array([[2.0, 1.0, 1.0, 0.0]] * MASK, np.float32)
  return jnp.asarray(nbr), jnp.asarray(nw)


def test_schedules():
  t = np.linspace(0, 1, 11, dtype=np.float32)
  np.testing.assert_allclose(masking.mask_ratio(t, "linear"), t, atol=1e-7)
  np.testing.assert_allclose(masking.mask_ratio(t, "cosine"), np.sin(np.pi * t / 2), atol=1e-6)
  s = 5.0
  np.testing.assert_allclose(masking.mask_ratio(t, "shifted", s), s * t / (1 + (s - 1) * t),
                             atol=1e-6)
  # Shift > 1 masks more at every interior t; shift 1 is linear.
  assert np.all(np.asarray(masking.mask_ratio(t[1:-1], "shifted", s)) > t[1:-1])
  np.testing.assert_allclose(masking.mask_ratio(t, "shifted", 1.0), t, atol=1e-6)
  d = masking.mask_ratio_derivative(jnp.asarray([0.3, 0.5]), "cosine")
  np.testing.assert_allclose(d, 0.5 * np.pi * np.cos(0.5 * np.pi * np.array([0.3, 0.5])),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="schedule"):
    masking.mask_ratio(t, "square")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "shifted"])
def test_exact_mask_counts_per_example(schedule):
  cfg = masking.MaskingConfig(schedule=schedule, shift=3.0)
  tokens = _tokens()
  out = masking.corrupt(jax.random.key(1), tokens, MASK, cfg)
  length = 30
  expect = np.clip(np.round(np.asarray(masking.mask_ratio(out["t"], schedule, 3.0)) * length),
                   1, length)
  np.testing.assert_array_equal(np.asarray(out["masked"]).reshape(8, -1).sum(-1), expect)
  np.testing.assert_allclose(out["mask_ratio"], expect / length, rtol=1e-6)
  inputs, masked = np.asarray(out["inputs"]), np.asarray(out["masked"])
  assert np.all(inputs[masked] == MASK)
  np.testing.assert_array_equal(inputs[~masked], np.asarray(tokens)[~masked])
  # Stratified t covers [0, 1) with one draw per 1/B slot.
  np.testing.assert_array_equal(np.sort(np.floor(np.asarray(out["t"]) * 8)), np.arange(8))


def test_complementary_masks():
  cfg = masking.MaskingConfig(complementary=True)
  tokens = _tokens()
  out = masking.corrupt(jax.random.key(2), tokens, MASK, cfg)
  masked = np.asarray(out["masked"])
  np.testing.assert_array_equal(masked[4:], ~masked[:4])
  np.testing.assert_array_equal(out["labels"][4:], np.asarray(tokens)[:4])
  assert masked[:4].reshape(4, -1).sum(-1).min() >= 1
  assert masked[4:].reshape(4, -1).sum(-1).min() >= 1
  with pytest.raises(ValueError, match="even"):
    masking.corrupt(jax.random.key(2), tokens[:3], MASK, cfg)


def test_edit_corruption_uniform_and_neighbours():
  nbr, nw = _table()
  cfg = masking.MaskingConfig(schedule="linear", edit_fraction=0.3, edit_uniform_share=0.0,
                              min_t=0.1, keep_weight=0.0)
  tokens = _tokens(batch=64, seed=3)
  out = masking.corrupt(jax.random.key(3), tokens, MASK, cfg, neighbours=nbr,
                        neighbour_weights=nw)
  tok, inputs = np.asarray(tokens), np.asarray(out["inputs"])
  edited, masked = np.asarray(out["edited"]), np.asarray(out["masked"])
  assert not np.any(edited & masked)
  # Edits replace the truth by one of its (non-self) neighbours, and are supervised.
  offsets = (inputs[edited] - tok[edited]) % MASK
  assert set(np.unique(offsets)) == {1, 2}
  frac = edited.sum() / (~masked).sum()
  assert 0.2 < frac < 0.4, frac
  np.testing.assert_array_equal(inputs[~masked & ~edited], tok[~masked & ~edited])
  weights = np.asarray(out["weights"])
  assert np.all(weights[edited] > 0) and np.all(weights[masked] > 0)
  assert np.all(weights[~masked & ~edited] == 0)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)  # Uniform: mean over supervised.

  uni = masking.MaskingConfig(edit_fraction=0.3, edit_uniform_share=1.0, keep_weight=0.1)
  out = masking.corrupt(jax.random.key(4), tokens, MASK, uni, neighbours=nbr,
                        neighbour_weights=nw)
  edited, inputs = np.asarray(out["edited"]), np.asarray(out["inputs"])
  offsets = (inputs[edited] - tok[edited]) % MASK
  assert len(np.unique(offsets)) > 10  # Uniform codes, not just neighbours.
  clean = np.asarray(out["visible_clean"])
  np.testing.assert_allclose(np.asarray(out["weights"])[clean],
                             0.1 / (np.asarray(out["masked"]) | edited).sum(), rtol=1e-5)


def test_draft_edits_use_the_model_prediction_on_masked_input():
  calls = []

  def draft_fn(inputs, ratio):
    calls.append((inputs, ratio))
    return (jnp.where(inputs == MASK, 7, inputs) + 0).astype(jnp.int32)

  tokens = jnp.asarray(np.random.default_rng(5).integers(8, MASK, (4, 4, 4)), jnp.int32)
  cfg = masking.MaskingConfig(edit_fraction=0.5, edit_uniform_share=0.0, edit_source="draft")
  out = masking.corrupt(jax.random.key(5), tokens, MASK, cfg, draft_fn=draft_fn)
  edited = np.asarray(out["edited"])
  assert edited.sum() > 0
  assert np.all(np.asarray(out["inputs"])[edited] == 7)
  # The draft saw the edit positions masked (else it would copy the truth).
  draft_inputs = np.asarray(calls[0][0])
  assert np.all(draft_inputs[edited] == MASK)


def test_mdlm_weights_are_one_over_t_for_linear():
  cfg = masking.MaskingConfig(schedule="linear", weighting="mdlm", max_weight=1e9,
                              keep_weight=0.0)
  tokens = _tokens(batch=4, h=10, w=10)
  out = masking.corrupt(jax.random.key(6), tokens, MASK, cfg)
  t = np.asarray(out["t"])
  weights = np.asarray(out["weights"]).reshape(4, -1)
  masked = np.asarray(out["masked"]).reshape(4, -1)
  for b in range(4):
    np.testing.assert_allclose(weights[b][masked[b]], 1.0 / t[b] / (100 * 4), rtol=1e-4)
  # Expected total weight per example ~ r(t) * (1/t) / B = 1 / B for the linear schedule.
  np.testing.assert_allclose(weights.sum(-1), masked.mean(-1) / t / 4, rtol=1e-4)


def test_neighbour_sampling_follows_weights():
  nbr, nw = _table()
  labels = jnp.zeros((20000,), jnp.int32)
  picks = np.asarray(masking.sample_neighbours(jax.random.key(7), labels, nbr, nw))
  assert set(np.unique(picks)) == {1, 2}  # Never itself, never padding.
  assert abs(np.mean(picks == 1) - 0.5) < 0.02


def test_config_validation():
  with pytest.raises(ValueError, match="weighting"):
    masking.MaskingConfig(weighting="elbo")
  with pytest.raises(ValueError, match="edit_fraction"):
    masking.MaskingConfig(edit_fraction=1.5)
  import ml_collections
  with pytest.raises(ValueError, match="unknown"):
    masking.MaskingConfig.from_config(ml_collections.ConfigDict({"shedule": "linear"}))
  assert math.isclose(masking.MaskingConfig.from_config(
      ml_collections.ConfigDict({"shift": 2.0})).shift, 2.0)
