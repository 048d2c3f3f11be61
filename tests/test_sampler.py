"""Tests of the unmask-and-edit sampler (`mdd.sampling.sampler`) with synthetic `logits_fn`s.

Small vocabulary (8) and grid (4x5) keep each compilation short; configs are shared where a test
only needs a different input, because compiling (not running) dominates on CPU.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mdd import sampling as sampler
from mdd.sampling import policies

VOCAB = 8
MASK = VOCAB
GRID = (4, 5)
LENGTH = GRID[0] * GRID[1]


def _context(seed=0):
  rng = np.random.default_rng(seed)
  return dict(base=jnp.asarray(rng.normal(size=(LENGTH, VOCAB)) * 1.5, jnp.float32),
              mix=jnp.asarray(rng.normal(size=(VOCAB + 1, VOCAB)), jnp.float32))


def random_logits_fn(context, tokens, info):
  """Per-row deterministic logits depending on the row's own tokens and on the step."""
  previous = jnp.roll(tokens, 1, axis=1)   # the mask id indexes the last row of `mix`
  wobble = jnp.sin(1.0 + info.step.astype(jnp.float32))
  return context["base"][None] + context["mix"][previous] + wobble * context["base"][None, ::-1]


def target_logits_fn(context, tokens, info):
  """Prefers context["target"][b] at every position, with a per-position confidence."""
  target = info.per_row(context["target"])             # [R, L]
  strength = info.per_row(context["strength"])[..., None]  # [R, L, 1]
  del tokens
  return strength * jax.nn.one_hot(target, VOCAB)


def cfg_logits_fn(context, tokens, info):
  """Different logits on conditional and unconditional rows (and both depend on the tokens)."""
  conditional = random_logits_fn(context, tokens, info)
  unconditional = 0.7 * context["base"][None, ::-1] - 0.5 * context["mix"][tokens]
  return jnp.where(info.cond_mask[:, None, None], conditional, unconditional)


def _initial_tokens(batch, seed, mask_fraction=0.6):
  rng = np.random.default_rng(seed)
  given = rng.integers(0, VOCAB, size=(batch, *GRID))
  masked = rng.random((batch, *GRID)) < mask_fraction
  masked[:, 0, 0] = True  # every sample has something to fill
  return jnp.asarray(np.where(masked, MASK, given), jnp.int32)


def _config(**kwargs):
  return sampler.SamplerConfig(mask_id=MASK, **kwargs)


# A config that switches everything on (CFG, editing, ReMDM, top-k/p, temperature schedule).
FULL = _config(num_steps=5, unmask_policy="stratified", guidance_scale=1.5,
               guidance_schedule="linear", edit_threshold=0.2, edit_max_fraction=0.1,
               num_edit_passes=2, edit_mode="remask", remask_policy="remdm", remdm_eta=0.2,
               top_k=6, top_p=0.95, temperature=1.5, temperature_end=0.5,
               temperature_schedule="linear")


@pytest.fixture(scope="module")
def full_batch8():
  tokens = _initial_tokens(8, seed=1)
  out = sampler.sample(cfg_logits_fn, jax.random.key(7), tokens, FULL, context=_context())
  return tokens, jax.device_get(out)


@pytest.mark.parametrize("schedule,policy", [("list", "confidence"), ("linear", "halton"),
                                             ("shifted", "stratified"), ("cosine", "entropy")])
def test_every_mask_filled_exactly_once(schedule, policy):
  config = _config(num_steps=6, schedule=schedule, schedule_shift=3.0,
                   schedule_mask_ratios=(0.9, 0.8, 0.8, 0.5, 0.2, 0.1), unmask_policy=policy,
                   edit_threshold=1.0, num_edit_passes=1)
  tokens = _initial_tokens(3, seed=2)
  out = jax.device_get(sampler.sample(random_logits_fn, jax.random.key(0), tokens, config,
                                      context=_context()))
  tokens = np.asarray(tokens)
  initially_masked = tokens == MASK
  final = out.tokens
  assert not np.any(final == MASK)
  np.testing.assert_array_equal(final[~initially_masked], tokens[~initially_masked])
  np.testing.assert_array_equal(out.trajectory.unmasked.sum(0), initially_masked)
  assert not out.trajectory.edited.any() and not out.stats["num_edited"].any()
  # A position keeps the token it was given when it was unmasked.
  for step_tokens in out.trajectory.tokens:
    visible = step_tokens != MASK
    np.testing.assert_array_equal(step_tokens[visible], final[visible])

  # The number still masked follows the schedule, with at least one unmasked per step.
  ratios = sampler.mask_ratio_schedule(config)
  assert ratios[-1] == 0 and np.all(np.diff(ratios) <= 0)
  num_initial = initially_masked.reshape(3, -1).sum(-1)
  remaining = num_initial.copy()
  for step in range(config.num_steps):
    expected = np.maximum(0, np.minimum(np.floor(num_initial * ratios[step] + 1e-3),
                                        remaining - 1))
    if policy == "entropy":  # may accept more than the schedule asks for
      assert np.all(out.stats["num_masked"][step] <= expected)
    else:
      np.testing.assert_array_equal(out.stats["num_masked"][step], expected)
    assert np.all(out.stats["num_unmasked"][step][remaining > 0] >= 1)
    remaining = out.stats["num_masked"][step]
  assert not out.stats["num_unmasked"][config.num_steps:].any()

  if policy == "halton":  # positions are filled in Halton order
    rank = policies._halton_rank(*GRID)
    step_of = np.argmax(out.trajectory.unmasked, axis=0)  # [B, h, w]
    for b in range(3):
      cells = initially_masked[b]
      by_rank = np.argsort(rank[cells])
      assert np.all(np.diff(step_of[b][cells][by_rank]) >= 0)


def test_same_key_same_result_and_key_matters(full_batch8):
  tokens, out = full_batch8
  again = jax.device_get(sampler.sample(cfg_logits_fn, jax.random.key(7), tokens, FULL,
                                        context=_context()))
  np.testing.assert_array_equal(again.tokens, out.tokens)
  np.testing.assert_array_equal(again.trajectory.tokens, out.trajectory.tokens)
  other = jax.device_get(sampler.sample(cfg_logits_fn, jax.random.key(8), tokens, FULL,
                                        context=_context()))
  assert np.any(other.tokens != out.tokens)
  assert not np.any(out.tokens == MASK)
  # The full config does edit and re-mask, and guidance ramps up linearly from 0.
  assert out.stats["num_edited"].sum() > 0 and out.stats["num_remasked"].sum() > 0
  np.testing.assert_allclose(out.stats["guidance"], [0, 0.375, 0.75, 1.125, 1.5, 1.5, 1.5])


def test_batch_of_one_matches_batch_of_eight(full_batch8):
  tokens, out = full_batch8
  for b in (0, 5):
    single = jax.device_get(sampler.sample(
        cfg_logits_fn, jax.random.key(7), tokens[b:b + 1], FULL, context=_context(),
        sample_index=jnp.array([b], jnp.int32)))
    np.testing.assert_array_equal(single.tokens[0], out.tokens[b])
    np.testing.assert_array_equal(single.trajectory.tokens[:, 0], out.trajectory.tokens[:, b])
    np.testing.assert_array_equal(single.stats["num_edited"][:, 0], out.stats["num_edited"][:, b])


def test_sharded_batch_matches_unsharded(full_batch8):
  tokens, out = full_batch8
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded_tokens = jax.device_put(tokens, NamedSharding(mesh, PartitionSpec("data")))
  sharded = sampler.sample(cfg_logits_fn, jax.random.key(7), sharded_tokens, FULL,
                           context=_context())
  assert len(sharded.tokens.sharding.device_set) == 8
  np.testing.assert_array_equal(jax.device_get(sharded.tokens), out.tokens)


def _edit_setup():
  """Four samples: masked, wrong-but-editable and wrong-but-fixed positions; a confident model."""
  rng = np.random.default_rng(3)
  target = rng.integers(0, VOCAB, size=(4, LENGTH))
  kind = rng.integers(0, 3, size=(4, LENGTH))  # 0 masked, 1 wrong editable, 2 wrong fixed
  wrong = (target + rng.integers(1, VOCAB, size=target.shape)) % VOCAB
  tokens = np.where(kind == 0, MASK, wrong).reshape(4, *GRID)
  fixed = (kind == 2).reshape(4, *GRID)
  context = dict(target=jnp.asarray(target, jnp.int32),
                 strength=jnp.full((4, LENGTH), 9.0, jnp.float32))
  return (jnp.asarray(tokens, jnp.int32), jnp.asarray(fixed), target.reshape(4, *GRID),
          kind.reshape(4, *GRID), context)


def test_confident_disagreement_triggers_edit():
  tokens, fixed, target, kind, context = _edit_setup()
  config = _config(num_steps=4, edit_threshold=0.9, edit_max_fraction=1.0, num_edit_passes=0)
  out = jax.device_get(sampler.sample(target_logits_fn, jax.random.key(0), tokens, config,
                                      context=context, fixed=fixed))
  editable = kind == 1
  # p(target) = e^9 / (e^9 + 7) > 0.9: every wrong editable token is fixed at the first step.
  np.testing.assert_array_equal(out.trajectory.edited[0], editable)
  np.testing.assert_array_equal(out.tokens[kind != 2], target[kind != 2])
  np.testing.assert_array_equal(out.tokens[kind == 2], np.asarray(tokens)[kind == 2])
  assert not out.trajectory.edited[1:].any()


def test_threshold_one_never_edits():
  tokens, fixed, _, kind, context = _edit_setup()
  config = _config(num_steps=4, edit_threshold=1.0, edit_max_fraction=1.0, num_edit_passes=3)
  out = jax.device_get(sampler.sample(target_logits_fn, jax.random.key(0), tokens, config,
                                      context=context, fixed=fixed))
  assert not out.stats["num_edited"].any() and not out.trajectory.edited.any()
  visible = kind != 0
  np.testing.assert_array_equal(out.tokens[visible], np.asarray(tokens)[visible])


@pytest.mark.parametrize("edit_mode", ["overwrite", "remask"])
def test_edit_window_and_cap(edit_mode):
  """All positions visible and wrong: edits happen only in the window and the passes, <= cap."""
  rng = np.random.default_rng(4)
  target = rng.integers(0, VOCAB, size=(2, LENGTH))
  tokens = jnp.asarray(((target + 1) % VOCAB).reshape(2, *GRID), jnp.int32)
  strength = rng.uniform(4.0, 12.0, size=(2, LENGTH))  # distinct gains: the cap keeps the best
  context = dict(target=jnp.asarray(target, jnp.int32), strength=jnp.asarray(strength))
  config = _config(num_steps=6, edit_threshold=0.5, edit_max_fraction=0.1, edit_start_step=2,
                   edit_end_step=4, num_edit_passes=2, edit_mode=edit_mode,
                   edit_fixed=edit_mode == "overwrite")
  cap = config.max_edits_per_step(LENGTH)
  assert cap == 2
  # Overwrite: the given tokens are fixed by default, edit_fixed allows editing them.
  # Remask: pass fixed=False explicitly instead.
  fixed = None if edit_mode == "overwrite" else jnp.zeros(tokens.shape, bool)
  out = jax.device_get(sampler.sample(target_logits_fn, jax.random.key(1), tokens, config,
                                      context=context, fixed=fixed))
  edits = out.stats["num_edited"]
  np.testing.assert_array_equal(edits, np.array([[0, 0, 2, 2, 0, 0, 2, 2]] * 2).T)
  np.testing.assert_array_equal(out.trajectory.edited.sum((2, 3)), edits)
  # The cap keeps the largest gains first (gain grows with strength here).
  order = np.argsort(-strength, axis=1)
  first_edit = out.trajectory.edited[2].reshape(2, LENGTH)
  for b in range(2):
    assert set(np.flatnonzero(first_edit[b])) == set(order[b, :2])
  assert not np.any(out.tokens == MASK)
  changed = out.trajectory.edited.any(0).reshape(2, LENGTH)
  np.testing.assert_array_equal(out.tokens.reshape(2, LENGTH)[changed], target[changed])
  if edit_mode == "remask":
    # Edited positions are re-masked, refilled at the next step, except at the very last step.
    step_tokens = out.trajectory.tokens
    np.testing.assert_array_equal(step_tokens[2][out.trajectory.edited[2]], MASK)
    np.testing.assert_array_equal(out.stats["num_unmasked"][3], 2)
    assert not np.any(step_tokens[-1] == MASK)


def test_inpainting_never_changes_fixed_tokens(full_batch8):
  """Given tokens stay put at every step, although edits and re-masking are frequent."""
  tokens, out = full_batch8
  tokens = np.asarray(tokens)
  given = tokens != MASK
  assert 0 < given.mean() < 1
  assert out.stats["num_edited"].sum() > 0 and out.stats["num_remasked"].sum() > 0
  for step_tokens, step_edited in zip(out.trajectory.tokens, out.trajectory.edited):
    np.testing.assert_array_equal(step_tokens[given], tokens[given])
    assert not step_edited[given].any()
  assert not np.any(out.tokens == MASK)


def test_classifier_free_guidance():
  tokens = _initial_tokens(3, seed=6)
  base = _config(num_steps=4, edit_threshold=0.4, num_edit_passes=1)
  seen_rows = []

  def mixing_fn(context, tokens, info):
    """A model that applies guidance itself, c + w (c - u), with w from the context."""
    seen_rows.append(tokens.shape[0])
    cond = cfg_logits_fn(context, tokens, info.replace(cond_mask=jnp.ones_like(info.cond_mask)))
    uncond = cfg_logits_fn(context, tokens,
                           info.replace(cond_mask=jnp.zeros_like(info.cond_mask)))
    return cond + context["w"] * (cond - uncond)

  def guided_fn(context, tokens, info):
    seen_rows.append(tokens.shape[0])
    return cfg_logits_fn(context, tokens, info)

  def run(fn, config, w=0.0):
    context = dict(_context(2), w=jnp.float32(w))
    return jax.device_get(sampler.sample(fn, jax.random.key(3), tokens, config,
                                         context=context)).tokens

  conditional = run(mixing_fn, base, w=0.0)   # w = 0: the conditional model alone
  assert seen_rows == [3]                     # and no unconditional rows at all

  # w > 0 but outside its interval at every step: the same as the conditional path.
  outside = dataclasses.replace(base, guidance_scale=3.0, guidance_interval=(0.9, 1.0))
  np.testing.assert_array_equal(run(guided_fn, outside), conditional)
  assert sorted(seen_rows[1:]) == [3, 6]      # both branches traced, cond + uncond in one call

  # w > 0: the sampler's one 2B-row call equals a model that mixes c and u itself.
  w = 2.0
  guided = run(guided_fn, dataclasses.replace(base, guidance_scale=w))
  np.testing.assert_array_equal(guided, run(mixing_fn, base, w=w))
  assert np.any(guided != conditional)


def test_compiles_once_and_temperature_zero_is_argmax():
  traces = []

  def counting_fn(context, tokens, info):
    traces.append(tokens.shape)
    return random_logits_fn(context, tokens, info)

  config = _config(num_steps=3, temperature=0.0, confidence_noise=0.0, edit_threshold=1.0)
  outputs = []
  for seed in range(3):
    tokens = jnp.full((2, *GRID), MASK, jnp.int32)
    outputs.append(jax.device_get(sampler.sample(
        counting_fn, jax.random.key(seed), tokens, config, context=_context(seed % 2)).tokens))
  assert len(traces) == 1
  np.testing.assert_array_equal(outputs[0], outputs[2])   # no randomness left at temperature 0
  assert np.any(outputs[0] != outputs[1])                 # but the context is a real input

  # Without noise the confidence policy fills the most confident positions first: step 0 of
  # cosine over 3 steps leaves floor(20 cos(pi/6)) = 17 of 20 masked, so it fills the top 3.
  out = jax.device_get(sampler.sample(counting_fn, jax.random.key(5),
                                      jnp.full((2, *GRID), MASK, jnp.int32), config,
                                      context=_context(0)))
  context = jax.device_get(_context(0))
  logits = context["base"] + context["mix"][MASK] + np.sin(1.0) * context["base"][::-1]
  confidence = jax.nn.log_softmax(logits).max(-1)
  top3 = np.argsort(-confidence)[:3]
  for b in range(2):
    assert set(np.flatnonzero(out.trajectory.unmasked[0, b])) == set(top3)
    np.testing.assert_array_equal(out.trajectory.tokens[0, b].reshape(-1)[top3],
                                  logits[top3].argmax(-1))


def test_halton_order_is_a_spread_out_permutation():
  for height, width in [(4, 4), (3, 5), (1, 7), (16, 16), (9, 12)]:
    order = sampler.halton_order(height, width)
    np.testing.assert_array_equal(np.sort(order), np.arange(height * width))
  # Halton point 1 is (x, y) = (1/2, 1/3): columns follow base 2, rows base 3.
  assert divmod(int(sampler.halton_order(9, 8)[0]), 8) == (3, 4)
  # Early positions are spread out: no two of the first 32 of a 32x32 grid are within 2 cells
  # (a raster or random order puts neighbours side by side).
  rows, cols = np.divmod(sampler.halton_order(32, 32)[:32], 32)
  points = np.stack([rows, cols], 1)
  chebyshev = np.abs(points[:, None] - points[None]).max(-1) + 99 * np.eye(32, dtype=int)
  assert chebyshev.min() >= 3


def test_entropy_bounded_count_matches_brute_force():
  rng = np.random.default_rng(7)
  count = jax.jit(sampler.entropy_bounded_count, static_argnames="bound")
  for trial in range(6):
    entropy = rng.exponential(0.05, size=16).astype(np.float32)
    candidates = rng.random(16) < 0.7
    candidates[trial] = True
    bound = [0.0, 0.05, 0.1, 0.3, 10.0, 0.1][trial]
    sorted_h = np.sort(entropy[candidates])
    expected = max(j for j in range(1, len(sorted_h) + 1)
                   if sorted_h[:j].sum() - sorted_h[:j].max() <= bound + 1e-7)
    assert int(count(jnp.asarray(entropy), jnp.asarray(candidates), bound=bound)) == expected
  assert int(count(jnp.ones(4), jnp.zeros(4, bool), bound=0.1)) == 0


def test_filter_logits_against_numpy():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(5, 12)).astype(np.float32)
  top_k = np.asarray(sampler.filter_logits(jnp.asarray(logits), top_k=3))
  for row, out in zip(logits, top_k):
    np.testing.assert_array_equal(np.isfinite(out), row >= np.sort(row)[-3])
  top_p = np.asarray(sampler.filter_logits(jnp.asarray(logits), top_p=0.6))
  for row, out in zip(logits, top_p):
    probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(12, bool)
    keep[order[mass_before < 0.6]] = True
    np.testing.assert_array_equal(np.isfinite(out), keep)


def test_step_table_and_config():
  config = _config(num_steps=4, schedule="shifted", schedule_shift=5.0, guidance_scale=2.0,
                   guidance_schedule="linear", guidance_interval=(0.25, 0.75), temperature=2.0,
                   temperature_end=0.0, temperature_schedule="linear", remask_policy="remdm",
                   remdm_eta=0.3, num_edit_passes=1, edit_start_step=1, edit_end_step=3)
  table = sampler.step_table(config)
  t = 1.0 - np.arange(1, 5) / 4
  np.testing.assert_allclose(table["mask_ratio_after"][:4],
                             np.append((5 * t / (1 + 4 * t))[:3], 0.0), rtol=1e-6)
  np.testing.assert_allclose(table["guidance"], [0, 2 / 3, 4 / 3, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(table["temperature"], [2, 4 / 3, 2 / 3, 0, 0], rtol=1e-6)
  np.testing.assert_array_equal(table["edit_active"], [False, True, True, False, True])
  ratio = table["mask_ratio_after"]
  np.testing.assert_allclose(table["remdm_sigma"],
                             [0, min(0.3, ratio[1] / (1 - ratio[0])),
                              min(0.3, ratio[2] / (1 - ratio[1])), 0, 0], rtol=1e-6)
  np.testing.assert_allclose(table["noise"], 4.5 * (1 - np.array([0, 1, 2, 3, 3]) / 4))

  section = sampler.default_config()
  section.mask_id = MASK
  assert sampler.SamplerConfig.from_config(section) == sampler.SamplerConfig(mask_id=MASK)
  hash(sampler.SamplerConfig.from_config(section, num_steps=3))
  with pytest.raises(ValueError, match="schedule"):
    _config(schedule="quadratic")
  with pytest.raises(ValueError, match="mask_id"):
    sampler.SamplerConfig.from_config(sampler.default_config())
  with pytest.raises(ValueError, match="unknown fields"):
    sampler.SamplerConfig.from_config(section, edit_treshold=0.5)
  with pytest.raises(ValueError, match="schedule_mask_ratios"):
    _config(num_steps=3, schedule="list", schedule_mask_ratios=(0.5, 0.6, 0.0))
  with pytest.raises(ValueError, match="tokens must be"):
    sampler.sample(random_logits_fn, jax.random.key(0), jnp.zeros((2,), jnp.int32), config)


def test_counter_noise_is_uniform_and_gumbel_max_matches_the_distribution():
  seed = sampler.step_seed(jnp.array([12345, 678], jnp.uint32), 3)
  noise = np.asarray(sampler.counter_uniform(seed, (400, 50)))
  assert 0 < noise.min() and noise.max() < 1
  counts = np.histogram(noise, bins=10, range=(0, 1))[0]  # 2000 expected, sd ~ 42
  assert np.all(np.abs(counts - 2000) < 200)
  # Neighbouring columns, rows and steps are uncorrelated.
  next_step = np.asarray(sampler.counter_uniform(
      sampler.step_seed(jnp.array([12345, 678], jnp.uint32), 4), (400, 50)))
  for a, b in [(noise[:, 1:], noise[:, :-1]), (noise[1:], noise[:-1]), (noise, next_step)]:
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.03
  # Gumbel-max with this noise samples the categorical distribution.
  probs = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
  uniform = np.asarray(sampler.counter_uniform(seed, (20000, 5)), np.float64)
  draws = np.argmax(np.log(probs) - np.log(-np.log(uniform)), axis=1)
  np.testing.assert_allclose(np.bincount(draws, minlength=5) / 20000, probs, atol=0.015)
