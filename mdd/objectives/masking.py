"""Mask schedules, masking and edit-corruption of token grids, and per-token loss weights.

Time `t` in [0, 1] maps to a mask ratio r(t) (t=1: all masked):
  linear  r = t
  cosine  r = sin(pi t / 2)        (MaskGIT's cos(pi u / 2) with u = 1 - t: mostly high ratios)
  shifted r = s t / (1 + (s - 1) t)   (LaViDa-O; s > 1 pushes towards high ratios)

`corrupt` draws one t per example, masks exactly round(r L) positions (at least 1, at most
L - 1 when complementary), then replaces a fraction `edit_fraction` of the *visible* tokens by
uniform random codes and/or GCE neighbours of the true code (or the model's own draft) and
supervises them: the model learns to say "this visible token is wrong". A small weight on the
clean visible tokens teaches it to keep right ones (else a sampler would edit everything).

Loss weights are `weights [B, h, w]` such that the batch loss is `sum(weights * token_loss)`:
  uniform  mean over supervised tokens of the batch;
  mdlm     per example r'(t)/r(t) * (1/L), averaged over the batch (MDLM's ELBO weight; = 1/t
           for the linear schedule), clipped at `max_weight`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

SCHEDULES = ("linear", "cosine", "shifted")
WEIGHTINGS = ("uniform", "mdlm")


def mask_ratio(t: jax.Array, schedule: str = "cosine", shift: float = 1.0) -> jax.Array:
  """r(t): the fraction of masked tokens at time t in [0, 1] (monotone, r(0)=0, r(1)=1)."""
  t = jnp.asarray(t, jnp.float32)
  if schedule == "linear":
    return t
  if schedule == "cosine":
    return jnp.sin(0.5 * math.pi * t)
  if schedule == "shifted":
    if shift <= 0:
      raise ValueError(f"shifted schedule needs shift > 0, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)
  raise ValueError(f"unknown mask schedule {schedule!r}; choose one of {SCHEDULES}")


def mask_ratio_derivative(t: jax.Array, schedule: str = "cosine", shift: float = 1.0):
  """dr/dt, for the MDLM weight r'(t)/r(t)."""
  return jax.vmap(jax.grad(lambda s: mask_ratio(s, schedule, shift)))(
      jnp.asarray(t, jnp.float32).reshape(-1)).reshape(jnp.shape(t))


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """Typed masking options (built from the `masking` config section by `from_config`)."""
  schedule: str = "cosine"
  shift: float = 1.0
  min_t: float = 0.0  # Lower bound of t (avoids near-zero ratios that carry little signal).
  stratified: bool = True  # Low-discrepancy t over the batch: (u + b/B) mod 1.
  complementary: bool = False  # Second half of the batch = first half, complementary masks.
  edit_fraction: float = 0.0  # Fraction of visible tokens corrupted and supervised.
  edit_uniform_share: float = 0.5  # Of the edits: uniform codes; the rest: neighbours/draft.
  edit_source: str = "neighbour"  # The non-uniform edits: "neighbour" or "draft".
  edit_weight: float = 1.0  # Loss weight of corrupted visible tokens (vs masked ones).
  keep_weight: float = 0.05  # Loss weight of clean visible tokens (learn to keep them).
  weighting: str = "uniform"
  max_weight: float = 10.0  # Clip for the mdlm weight.

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"masking.schedule={self.schedule!r}: choose one of {SCHEDULES}")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"masking.weighting={self.weighting!r}: choose one of {WEIGHTINGS}")
    if self.edit_source not in ("neighbour", "draft"):
      raise ValueError(f"masking.edit_source={self.edit_source!r}: 'neighbour' or 'draft'")
    for name in ("min_t", "edit_fraction", "edit_uniform_share"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"masking.{name}={getattr(self, name)}: must be in [0, 1]")

  @classmethod
  def from_config(cls, cfg) -> "MaskingConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(cfg.keys()) - fields
    if unknown:
      raise ValueError(f"masking: unknown fields {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**{k: cfg[k] for k in cfg.keys()})


def sample_times(rng: jax.Array, batch: int, cfg: MaskingConfig) -> jax.Array:
  """Per-example t in [min_t, 1)."""
  if cfg.stratified:
    u = (jax.random.uniform(rng, ()) + jnp.arange(batch) / batch) % 1.0
  else:
    u = jax.random.uniform(rng, (batch,))
  return cfg.min_t + (1.0 - cfg.min_t) * u


def random_mask(rng: jax.Array, num_masked: jax.Array, length: int) -> jax.Array:
  """bool [B, L] with exactly `num_masked[b]` True entries at uniformly random positions."""
  scores = jax.random.uniform(rng, (num_masked.shape[0], length))
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return ranks < num_masked[:, None]


def sample_neighbours(rng: jax.Array, labels: jax.Array, neighbours: jax.Array,
                      neighbour_weights: jax.Array) -> jax.Array:
  """One neighbour of each label other than itself, drawn by the table's weights.

  Rows with no other neighbour (all padding) return a uniform random code instead.
  """
  vocab = neighbours.shape[0]
  group = neighbours[labels]  # [..., K]
  weights = jnp.where((group >= 0) & (group != labels[..., None]),
                      neighbour_weights[labels].astype(jnp.float32), 0.0)
  has_any = weights.sum(-1) > 0
  k_rng, u_rng = jax.random.split(rng)
  logits = jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), -jnp.inf)
  logits = jnp.where(has_any[..., None], logits, 0.0)
  pick = jax.random.categorical(k_rng, logits, axis=-1)
  chosen = jnp.take_along_axis(group, pick[..., None], axis=-1)[..., 0]
  fallback = jax.random.randint(u_rng, labels.shape, 0, vocab)
  return jnp.where(has_any, chosen, fallback).astype(labels.dtype)


def corrupt(rng: jax.Array, tokens: jax.Array, mask_id: int, cfg: MaskingConfig, *,
            neighbours: jax.Array | None = None, neighbour_weights: jax.Array | None = None,
            draft_fn=None) -> dict[str, jax.Array]:
  """Masks and edit-corrupts a batch of token grids.

  Args:
    tokens: int32 [B, h, w] ground-truth codes in [0, V); V = `mask_id`.
    neighbours, neighbour_weights: [V, K] GCE table (needed for neighbour edits).
    draft_fn: for `edit_source="draft"`: `(inputs [B,h,w], mask_ratio [B]) -> codes [B,h,w]`,
      the model's own one-step prediction (called on the input with the edit positions also
      masked, so the draft there is a plausible model error, not a copy of the truth).

  Returns a dict of [B, h, w] arrays: `inputs` (ids fed to the model), `labels` (= tokens),
  `masked`, `edited` (visible & corrupted), `visible_clean`, `weights` (loss weights), and
  `mask_ratio [B]` (the actual masked fraction, the model's condition), `t [B]`.
  """
  batch, height, width = tokens.shape
  length = height * width
  if cfg.complementary and batch % 2:
    raise ValueError(f"complementary masking needs an even batch, got {batch}")
  t_rng, m_rng, e_rng, s_rng, n_rng, u_rng = jax.random.split(rng, 6)
  flat = tokens.reshape(batch, length)
  half = batch // 2 if cfg.complementary else batch
  if cfg.complementary:
    flat = jnp.concatenate([flat[:half], flat[:half]], axis=0)
  t = sample_times(t_rng, half, cfg)
  ratio = mask_ratio(t, cfg.schedule, cfg.shift)
  hi = length - 1 if cfg.complementary else length
  num_masked = jnp.clip(jnp.round(ratio * length), 1, hi).astype(jnp.int32)
  masked = random_mask(m_rng, num_masked, length)
  if cfg.complementary:
    masked = jnp.concatenate([masked, ~masked], axis=0)
    t = jnp.concatenate([t, 1.0 - t], axis=0)
  visible = ~masked
  actual_ratio = masked.mean(-1)

  # Edit corruption of visible tokens.
  if cfg.edit_fraction > 0:
    edited = visible & (jax.random.uniform(e_rng, (batch, length)) < cfg.edit_fraction)
    use_uniform = jax.random.uniform(s_rng, (batch, length)) < cfg.edit_uniform_share
    uniform_codes = jax.random.randint(u_rng, (batch, length), 0, mask_id)
    if cfg.edit_source == "neighbour":
      if neighbours is None or neighbour_weights is None:
        raise ValueError("neighbour edits need the neighbour table and weights")
      other = sample_neighbours(n_rng, flat, neighbours, neighbour_weights)
    else:
      if draft_fn is None:
        raise ValueError("edit_source='draft' needs draft_fn")
      draft_input = jnp.where(masked | edited, mask_id, flat)
      draft_ratio = (masked | edited).mean(-1)
      other = jax.lax.stop_gradient(draft_fn(draft_input.reshape(batch, height, width),
                                             draft_ratio)).reshape(batch, length)
    replacement = jnp.where(use_uniform, uniform_codes, other)
    # A replacement equal to the truth is a "keep" example, not an edit.
    edited = edited & (replacement != flat)
  else:
    edited = jnp.zeros_like(masked)
    replacement = flat
  inputs = jnp.where(masked, mask_id, jnp.where(edited, replacement, flat))
  visible_clean = visible & ~edited

  per_token = (masked.astype(jnp.float32) + cfg.edit_weight * edited
               + cfg.keep_weight * visible_clean)
  if cfg.weighting == "uniform":
    supervised = masked | edited
    weights = per_token / jnp.maximum(supervised.sum(), 1)
  else:
    # ELBO weight r'(t)/r(t) per example, with r evaluated at the t actually used.
    w_t = mask_ratio_derivative(t, cfg.schedule, cfg.shift) / jnp.maximum(
        mask_ratio(t, cfg.schedule, cfg.shift), 1e-6)
    w_t = jnp.minimum(w_t, cfg.max_weight)
    weights = per_token * w_t[:, None] / (length * batch)

  shape = (batch, height, width)
  return dict(inputs=inputs.reshape(shape).astype(jnp.int32), labels=flat.reshape(shape),
              masked=masked.reshape(shape), edited=edited.reshape(shape),
              visible_clean=visible_clean.reshape(shape), weights=weights.reshape(shape),
              mask_ratio=actual_ratio, t=t)
