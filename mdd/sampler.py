"""Unmask-and-edit sampler for masked discrete diffusion: one `lax.scan`, CFG, token editing.

`sample(logits_fn, rng, tokens, config)` fills every `config.mask_id` position of `tokens`, so
generation (all masked), inpainting (some masked, the rest fixed) and editing (visible tokens
that may be revised) are one function. Each scan step runs the model once and then

1. unmasks the number of masked positions the schedule asks for (>= 1 per step; all of them by
   the last step), chosen by the unmask policy (confidence + annealed Gumbel noise, a fixed or
   randomly shifted 2-D Halton order, or entropy-bounded acceptance);
2. edits visible, non-fixed positions whose new prediction differs from the current token with
   probability above `edit_threshold` (and `edit_margin` above the current token's), at most
   `edit_max_fraction` of the grid per step, inside the window [edit_start_step, edit_end_step),
   either overwriting them or re-masking them for a later step to refill;
3. optionally re-masks decoded positions at random (ReMDM-style, as a comparison policy).

After the `num_steps` unmask steps come `num_edit_passes` post-fill edit passes in the same scan.
Everything that varies over steps (mask ratio, temperature, guidance, noise, windows) is a
host-side table (`step_table`) fed to the scan, so a config compiles to one program per shape.

The model contract (`logits_fn`)
--------------------------------
    logits_fn(context, tokens, info) -> logits
      context: any pytree passed to `sample(..., context=...)` (params, text embeddings, ...).
               It is a traced jit argument, so new weights or prompts do not recompile and are
               not baked into the program as constants.
      tokens:  int32 [R, L] flattened token rows (mask_id at masked positions).
      info:    `StepInfo` (step, progress, cond_mask [R], row_index [R], mask_ratio [R]).
      logits:  float [R, L, V] with V >= mask_id (columns >= mask_id, if any, are ignored).
               Logits must be finite (use a large negative number to exclude a token).

Without guidance R = B and every row is conditional. With classifier-free guidance the sampler
doubles the batch in ONE call: R = 2B, rows interleaved as [cond_0, uncond_0, cond_1, ...] (so a
batch-sharded pair stays on one device); `info.cond_mask` is True on conditional rows and
`info.row_index` maps each row to its sample (0..B-1). `info.per_row(x)` expands a per-sample
array (e.g. text embeddings [B, ...]) to the rows. The closure drops the conditioning where
`cond_mask` is False. At steps whose guidance weight is 0 (schedule or interval) a `lax.cond`
runs the cheaper B-row call instead, so `logits_fn` is traced for both row counts.

Determinism: sample b draws a seed from `fold_in(rng, sample_index[b])` (default
`sample_index = arange(B)`) and every random number of step s at (position, column) is a hash of
(seed, s, position, column), so a sample does not change with batch size, position in the batch
or device count; the batch axis may be sharded (e.g. `NamedSharding(mesh, P("data"))`).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdd import hashing

SCHEDULES = ("cosine", "linear", "shifted", "list")
UNMASK_POLICIES = ("confidence", "halton", "stratified", "entropy")
EDIT_MODES = ("overwrite", "remask")
REMASK_POLICIES = ("none", "remdm")
RAMPS = ("constant", "linear", "cosine")

LogitsFn = Callable[[Any, jax.Array, "StepInfo"], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static sampler settings; hashable, so it is a `jit` static argument.

  Build it from the ml_collections section with `SamplerConfig.from_config(cfg)`. Defaults equal
  `mdd/configs/sampler.py:default_config()`, where every field is described.
  """
  mask_id: int
  num_steps: int = 16
  schedule: str = "cosine"
  schedule_shift: float = 5.0
  schedule_mask_ratios: tuple[float, ...] = ()
  unmask_policy: str = "confidence"
  confidence_noise: float = 4.5
  entropy_bound: float = 0.1
  entropy_noise: float = 0.05  # nats of per-seed uniform jitter on the entropy score (ties)
  temperature: float = 1.0
  temperature_end: float = 1.0
  temperature_schedule: str = "constant"
  top_k: int = 0
  top_p: float = 1.0
  guidance_scale: float = 0.0
  guidance_schedule: str = "constant"
  guidance_interval: tuple[float, float] = (0.0, 1.0)
  edit_threshold: float = 0.5
  edit_margin: float = 0.0
  edit_max_fraction: float = 0.05
  edit_start_step: int = 0
  edit_end_step: int = -1
  num_edit_passes: int = 2
  edit_mode: str = "overwrite"
  edit_fixed: bool = False
  remask_policy: str = "none"
  remdm_eta: float = 0.008
  record_trajectory: bool = True

  def __post_init__(self):
    def check(ok, message):
      if not ok:
        raise ValueError(f"sampler config: {message}")
    # Tuples may arrive as lists from a ConfigDict; keep the dataclass hashable.
    object.__setattr__(self, "schedule_mask_ratios",
                       tuple(float(r) for r in self.schedule_mask_ratios))
    object.__setattr__(self, "guidance_interval",
                       tuple(float(g) for g in self.guidance_interval))
    check(self.mask_id >= 0, f"mask_id must be >= 0 (the tokenizer's mask id), got {self.mask_id}")
    check(self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}")
    check(self.schedule in SCHEDULES, f"schedule {self.schedule!r} not in {SCHEDULES}")
    check(self.schedule_shift > 0, f"schedule_shift must be > 0, got {self.schedule_shift}")
    if self.schedule == "list":
      ratios = self.schedule_mask_ratios
      check(len(ratios) == self.num_steps,
            f"schedule_mask_ratios has {len(ratios)} entries, need num_steps={self.num_steps}")
      check(all(0.0 <= r <= 1.0 for r in ratios), "schedule_mask_ratios must lie in [0, 1]")
      check(all(a >= b for a, b in zip(ratios, ratios[1:])),
            "schedule_mask_ratios must be non-increasing")
    check(self.unmask_policy in UNMASK_POLICIES,
          f"unmask_policy {self.unmask_policy!r} not in {UNMASK_POLICIES}")
    check(self.confidence_noise >= 0, "confidence_noise must be >= 0")
    check(self.entropy_bound >= 0, "entropy_bound must be >= 0")
    check(self.entropy_noise >= 0, "entropy_noise must be >= 0")
    check(self.temperature >= 0 and self.temperature_end >= 0, "temperatures must be >= 0")
    check(self.temperature_schedule in RAMPS,
          f"temperature_schedule {self.temperature_schedule!r} not in {RAMPS}")
    check(self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
    check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
    check(self.guidance_schedule in RAMPS,
          f"guidance_schedule {self.guidance_schedule!r} not in {RAMPS}")
    check(len(self.guidance_interval) == 2
          and self.guidance_interval[0] <= self.guidance_interval[1],
          f"guidance_interval must be (lo, hi) with lo <= hi, got {self.guidance_interval}")
    check(self.edit_threshold >= 0, "edit_threshold must be >= 0 (>= 1 disables editing)")
    check(self.edit_margin >= 0, "edit_margin must be >= 0")
    check(0.0 <= self.edit_max_fraction <= 1.0, "edit_max_fraction must be in [0, 1]")
    check(0 <= self.edit_start_step <= self.num_steps,
          f"edit_start_step must be in [0, num_steps], got {self.edit_start_step}")
    check(self.edit_end_step == -1 or self.edit_start_step <= self.edit_end_step <= self.num_steps,
          f"edit_end_step must be -1 (= num_steps) or in [edit_start_step, num_steps], "
          f"got {self.edit_end_step}")
    check(self.num_edit_passes >= 0, "num_edit_passes must be >= 0")
    check(self.edit_mode in EDIT_MODES, f"edit_mode {self.edit_mode!r} not in {EDIT_MODES}")
    check(self.remask_policy in REMASK_POLICIES,
          f"remask_policy {self.remask_policy!r} not in {REMASK_POLICIES}")
    check(0.0 <= self.remdm_eta <= 1.0, "remdm_eta must be in [0, 1]")

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict, **overrides) -> "SamplerConfig":
    """The one place a `SamplerConfig` is built from a config section (`config.sampler`).

    `overrides` (e.g. `mask_id=tokenizer.mask_id`) win over the section's values.
    """
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"sampler config: unknown fields {unknown}")
    return cls(**values)

  @property
  def total_steps(self) -> int:
    return self.num_steps + self.num_edit_passes

  @property
  def editing(self) -> bool:
    """Whether any step can edit (statically), so the edit branch is compiled at all."""
    return (self.edit_threshold < 1.0 and self.edit_max_fraction > 0
            and bool(step_table(self)["edit_active"].any()))

  def max_edits_per_step(self, num_tokens: int) -> int:
    if self.edit_max_fraction <= 0:
      return 0
    return min(num_tokens, max(1, int(self.edit_max_fraction * num_tokens)))


@flax.struct.dataclass
class StepInfo:
  """What `logits_fn` learns about the step; arrays are per model row (R = B or 2B)."""
  step: jax.Array          # int32 scalar, 0-based scan step (>= num_steps in edit passes)
  progress: jax.Array      # float32 scalar, step / num_steps of the unmask schedule, in [0, 1)
  cond_mask: jax.Array     # bool [R], False on unconditional (CFG) rows
  row_index: jax.Array     # int32 [R], the sample (0..B-1) each row belongs to
  mask_ratio: jax.Array    # float32 [R], fraction of the row's positions that are masked
  rows_per_sample: int = flax.struct.field(pytree_node=False, default=1)

  def per_row(self, per_sample):
    """Expands a pytree of per-sample arrays [B, ...] to the model rows [R, ...]."""
    return jax.tree.map(lambda x: jnp.repeat(x, self.rows_per_sample, axis=0), per_sample)


@flax.struct.dataclass
class SamplerState:
  """Carry of the scan: the current tokens and the per-sample constants."""
  tokens: jax.Array        # int32 [B, L]
  fixed: jax.Array         # bool [B, L], never edited or re-masked (unless config.edit_fixed)
  seeds: jax.Array         # uint32 [B, 2] per-sample seeds, from fold_in(rng, sample_index)
  num_initial_masked: jax.Array  # int32 [B], what the schedule's ratios are relative to
  order_rank: jax.Array    # float32 [B, L], spatial unmask rank (Halton policies), else zeros


@flax.struct.dataclass
class Trajectory:
  """Per-step record, leading axis = scan step (num_steps + num_edit_passes)."""
  tokens: jax.Array        # int32 [S, B, ...] after each step (mask_id where masked)
  unmasked: jax.Array      # bool [S, B, ...] filled from mask at this step
  edited: jax.Array        # bool [S, B, ...] revised at this step (overwritten or re-masked)


@flax.struct.dataclass
class SampleOutput:
  tokens: jax.Array                  # int32, same shape as the input tokens, no mask_id left
  trajectory: Optional[Trajectory]   # None when config.record_trajectory is False
  stats: dict                        # see `sample`


# ----------------------------------------------------------------------------------------------
# Host-side schedules.


def mask_ratio_schedule(config: SamplerConfig) -> np.ndarray:
  """Fraction of the initially masked positions still masked after each unmask step, [T]."""
  steps = config.num_steps
  done = np.arange(1, steps + 1, dtype=np.float64) / steps   # fraction of the schedule done
  if config.schedule == "cosine":
    ratios = np.cos(0.5 * np.pi * done)
  elif config.schedule == "linear":
    ratios = 1.0 - done
  elif config.schedule == "shifted":
    # LaViDa-O's shift of the masked fraction t (1 -> 0): s > 1 keeps more masked early on.
    t, s = 1.0 - done, config.schedule_shift
    ratios = s * t / (1.0 + (s - 1.0) * t)
  else:
    ratios = np.asarray(config.schedule_mask_ratios, np.float64)
  ratios = np.clip(ratios, 0.0, 1.0)
  ratios[-1] = 0.0  # everything is filled by the last step, whatever the schedule says
  return ratios


def _ramp(kind: str, frac: np.ndarray) -> np.ndarray:
  """0 -> 1 over frac in [0, 1] (constant: always 1)."""
  if kind == "constant":
    return np.ones_like(frac)
  if kind == "linear":
    return frac
  return 0.5 * (1.0 - np.cos(np.pi * frac))


@functools.lru_cache(maxsize=64)
def _step_table_cached(config: SamplerConfig) -> dict:
  t_main, total = config.num_steps, config.total_steps
  steps = np.arange(total)
  main = np.minimum(steps, t_main - 1)   # edit passes reuse the last unmask step's knobs
  progress = main / t_main
  frac = main / max(t_main - 1, 1)
  ratio_after = np.concatenate([mask_ratio_schedule(config), np.zeros(config.num_edit_passes)])
  ratio_before = np.concatenate([[1.0], ratio_after[:-1]])

  temperature = config.temperature + (config.temperature_end - config.temperature) * _ramp(
      config.temperature_schedule, frac)
  if config.temperature_schedule == "constant":
    temperature = np.full(total, config.temperature)
  lo, hi = config.guidance_interval
  guidance = config.guidance_scale * _ramp(config.guidance_schedule, frac)
  guidance = np.where((progress >= lo) & (progress < hi), guidance, 0.0)
  noise = config.confidence_noise * (1.0 - main / t_main)  # MaskGIT: tau_t = tau_0 (1 - t/T)

  edit_end = t_main if config.edit_end_step < 0 else config.edit_end_step
  in_window = (steps >= config.edit_start_step) & (steps < edit_end)
  edit_active = np.where(steps < t_main, in_window, True)
  # A re-masked position needs a later step to refill it, so the very last step overwrites.
  edit_remasks = (config.edit_mode == "remask") & (steps < total - 1)

  # ReMDM cap: sigma = min(eta, (1 - alpha_s) / alpha_t), alpha = unmasked fraction before (t)
  # and after (s) the step; only before the last unmask step, so nothing is left masked.
  alpha_t, one_minus_alpha_s = 1.0 - ratio_before, ratio_after
  sigma = np.minimum(config.remdm_eta,
                     np.divide(one_minus_alpha_s, alpha_t, out=np.full(total, np.inf),
                               where=alpha_t > 0))
  remdm_active = (config.remask_policy == "remdm") & in_window & (steps < t_main - 1)
  remdm_sigma = np.where(remdm_active, sigma, 0.0)
  table = dict(step=steps.astype(np.int32), progress=progress.astype(np.float32),
               mask_ratio_after=ratio_after.astype(np.float32),
               temperature=temperature.astype(np.float32), guidance=guidance.astype(np.float32),
               noise=noise.astype(np.float32), edit_active=edit_active.astype(bool),
               edit_remasks=np.broadcast_to(edit_remasks, (total,)).astype(bool),
               remdm_sigma=remdm_sigma.astype(np.float32))
  for value in table.values():
    value.setflags(write=False)
  return table


def step_table(config: SamplerConfig) -> dict[str, np.ndarray]:
  """Per-step knobs [num_steps + num_edit_passes] for the scan (read-only numpy arrays)."""
  return _step_table_cached(config)


# ----------------------------------------------------------------------------------------------
# Halton order.


def _radical_inverse(indices: np.ndarray, base: int) -> np.ndarray:
  result = np.zeros(indices.shape, np.float64)
  scale = 1.0 / base
  n = indices.copy()
  while np.any(n > 0):
    result += (n % base) * scale
    n //= base
    scale /= base
  return result


@functools.lru_cache(maxsize=32)
def halton_order(height: int, width: int) -> np.ndarray:
  """Flat grid indices [height * width] in the order a 2-D Halton sequence first visits them.

  Columns follow base 2 and rows base 3 (Halton-MaskGIT), so early positions are spread over the
  whole grid. A permutation of range(height * width).
  """
  if height < 1 or width < 1:
    raise ValueError(f"halton_order: grid must be at least 1x1, got {height}x{width}")
  num_cells = height * width
  seen = np.zeros(num_cells, bool)
  order = []
  start, chunk = 1, max(64, 4 * num_cells)
  while len(order) < num_cells:
    if start > 10_000 * num_cells + 100_000:
      raise ValueError(f"halton_order: did not cover the {height}x{width} grid")  # cannot happen
    idx = np.arange(start, start + chunk, dtype=np.int64)
    cols = np.minimum((_radical_inverse(idx, 2) * width).astype(np.int64), width - 1)
    rows = np.minimum((_radical_inverse(idx, 3) * height).astype(np.int64), height - 1)
    cells = rows * width + cols
    _, first = np.unique(cells, return_index=True)  # first visit of each cell in this chunk
    new = cells[np.sort(first)]
    new = new[~seen[new]]
    seen[new] = True
    order.extend(new.tolist())
    start += chunk
  result = np.asarray(order, np.int32)
  result.setflags(write=False)
  return result


def _halton_rank(height: int, width: int) -> np.ndarray:
  """rank[cell] = position of the cell in `halton_order`, as a [height, width] array."""
  rank = np.empty(height * width, np.int32)
  rank[halton_order(height, width)] = np.arange(height * width, dtype=np.int32)
  return rank.reshape(height, width)


# ----------------------------------------------------------------------------------------------
# Noise: JAX's threefry gives each sample a 64-bit seed (`fold_in(rng, sample_index)`, outside the
# scan); a counter-based hash expands it per step. Threefry over a [L, V] shape compiles slowly on
# CPU (a vmapped [20, 10] draw took 4.1 s vs 0.6 s for two words, measured here, and each threefry
# call site in the scan body costs that again) and runs ~20 rounds per number on accelerators; the
# hash is a few integer ops. Every value depends only on (seed, step, row, column), so it does
# not change with batch size, position in the batch or sharding.


def step_seed(seeds: jax.Array, step: jax.Array) -> jax.Array:
  """uint32 [..., 2] per-sample seeds -> the seeds of scan step `step` (distinct per step)."""
  step = jnp.asarray(step, jnp.uint32)
  first = hashing.mix32(seeds[..., 0] + step * jnp.uint32(0x9E3779B9))
  second = hashing.mix32(seeds[..., 1] ^ hashing.mix32(step + jnp.uint32(0x7F4A7C15)))
  return jnp.stack([first, second], axis=-1)


def counter_uniform(seed: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """float32 `shape` uniforms in (0, 1) from a uint32 [2] seed; bijective in row and column."""
  rows = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
  cols = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
  h = hashing.mix32(rows * jnp.uint32(0x9E3779B9) ^ seed[0])
  h = hashing.mix32((h ^ seed[1]) + cols * jnp.uint32(0x27D4EB2F))
  h = hashing.mix32(h + seed[0] * jnp.uint32(0x165667B1))
  # 24 bits, centred in their bin, so neither 0 nor 1 is ever produced (Gumbel needs log(-log u)).
  return ((h >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


# ----------------------------------------------------------------------------------------------
# Per-row building blocks (public for tests and for other samplers).


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k and outside the top-p nucleus to -inf, over the last axis."""
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # Keep a token while the mass of the better ones is below top_p (the best is always kept).
    kept = mass_before < top_p
    cutoff = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def top_count_mask(score: jax.Array, count: jax.Array) -> jax.Array:
  """bool [L]: the `count` highest scores of one row (stable: ties go to the lower index)."""
  order = jnp.argsort(-score, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(score.shape[0], dtype=order.dtype))
  return rank < count


def entropy_bounded_count(entropy: jax.Array, candidates: jax.Array, bound: float) -> jax.Array:
  """Length of the longest lowest-entropy prefix of `candidates` with sum(H) - max(H) <= bound.

  For one row: sort the candidate entropies ascending, accept the first j with
  H_1 + ... + H_{j-1} <= bound (the prefix's max is its last element). At least 1 when there is
  any candidate; 0 otherwise.
  """
  sorted_h = jnp.sort(jnp.where(candidates, entropy, jnp.inf))
  sum_before = jnp.concatenate([jnp.zeros((1,), sorted_h.dtype), jnp.cumsum(sorted_h)[:-1]])
  num_candidates = jnp.sum(candidates)
  position = jnp.arange(sorted_h.shape[0])
  return jnp.sum((sum_before <= bound) & (position < num_candidates)).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# The sampler.


def _model_logits(logits_fn, context, tokens, step, progress, guidance, config):
  """Runs the model (with CFG rows when guidance is on); returns float32 [B, L, V]."""
  batch = tokens.shape[0]
  mask_ratio = jnp.mean(tokens == config.mask_id, axis=-1, dtype=jnp.float32)

  def conditional(_):
    info = StepInfo(step=step, progress=progress, cond_mask=jnp.ones((batch,), bool),
                    row_index=jnp.arange(batch, dtype=jnp.int32), mask_ratio=mask_ratio,
                    rows_per_sample=1)
    return _check_logits(logits_fn(context, tokens, info), tokens, config).astype(jnp.float32)

  if config.guidance_scale == 0:
    return conditional(None)

  def guided(_):
    info = StepInfo(step=step, progress=progress,
                    cond_mask=jnp.tile(jnp.array([True, False]), batch),
                    row_index=jnp.repeat(jnp.arange(batch, dtype=jnp.int32), 2),
                    mask_ratio=jnp.repeat(mask_ratio, 2), rows_per_sample=2)
    rows = _check_logits(logits_fn(context, jnp.repeat(tokens, 2, axis=0), info),
                         jnp.repeat(tokens, 2, axis=0), config).astype(jnp.float32)
    rows = rows.reshape(batch, 2, *rows.shape[1:])
    cond, uncond = rows[:, 0], rows[:, 1]
    return cond + guidance * (cond - uncond)  # = (1 + w) c - w u

  # Steps with weight 0 (schedule/interval) run the B-row model only.
  return jax.lax.cond(guidance != 0, guided, conditional, None)


def _check_logits(logits, tokens, config):
  if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
    raise ValueError(f"logits_fn must return [R, L, V] for tokens {tokens.shape}, "
                     f"got {logits.shape}")
  if logits.shape[-1] < config.mask_id:
    raise ValueError(f"logits_fn returned V={logits.shape[-1]} < mask_id={config.mask_id}; "
                     "the codebook ids 0..mask_id-1 need logits")
  return logits


def _sample_step(state: SamplerState, xs: dict, *, logits_fn, context, config: SamplerConfig):
  tokens, fixed = state.tokens, state.fixed
  mask_id = config.mask_id
  batch, length = tokens.shape
  masked = tokens == mask_id

  logits = _model_logits(logits_fn, context, tokens, xs["step"], xs["progress"],
                         xs["guidance"], config)
  if logits.shape[-1] > mask_id:
    # Ids from mask_id up are not codebook entries: never propose them.
    logits = logits.at[..., mask_id:].set(-jnp.inf)
  log_probs = jax.nn.log_softmax(logits, axis=-1)

  # One uniform draw per sample and step feeds every random choice of the step: Gumbel noise for
  # the proposal (V columns), for the confidence score and for ReMDM (one column each).
  vocab = logits.shape[-1]
  seeds = step_seed(state.seeds, xs["step"])
  uniform = jax.vmap(functools.partial(counter_uniform, shape=(length, vocab + 2)))(seeds)
  gumbel = -jnp.log(-jnp.log(uniform[..., :vocab + 1]))

  # Proposal: one token per position from the tempered, filtered distribution (Gumbel-max).
  temperature = xs["temperature"]
  table = step_table(config)["temperature"]
  filtered = filter_logits(logits, config.top_k, config.top_p)
  sampled = argmax = None
  if np.any(table > 0):
    sampled = jnp.argmax(filtered / jnp.maximum(temperature, 1e-6) + gumbel[..., :vocab], axis=-1)
  if np.any(table <= 0):
    argmax = jnp.argmax(filtered, axis=-1)
  if sampled is None:
    proposal = argmax
  elif argmax is None:
    proposal = sampled
  else:
    proposal = jnp.where(temperature > 0, sampled, argmax)
  proposal = proposal.astype(jnp.int32)
  logp_proposal = jnp.take_along_axis(log_probs, proposal[..., None], axis=-1)[..., 0]

  # 1. Unmask: the schedule says how many, the policy says which.
  num_masked = jnp.sum(masked, axis=-1, dtype=jnp.int32)
  # The small epsilon keeps float32 rounding (e.g. 12 * (1 - 1/6) = 9.99999) from unmasking one
  # token more than the schedule's exact count.
  target = jnp.floor(state.num_initial_masked * xs["mask_ratio_after"] + 1e-3).astype(jnp.int32)
  num_unmask = jnp.minimum(num_masked, jnp.maximum(num_masked - target, 1))
  if config.unmask_policy == "confidence":
    score = logp_proposal + xs["noise"] * gumbel[..., vocab]
  elif config.unmask_policy in ("halton", "stratified"):
    score = -state.order_rank
  else:  # entropy
    entropy = -jnp.sum(jnp.exp(log_probs) * jnp.where(log_probs > -jnp.inf, log_probs, 0.0),
                       axis=-1)
    # Per-seed jitter: near-ties are ordered by the sample's own random stream, not by the last
    # bits of the logits, which depend on the batch (XLA's matmul blocking follows its size), so
    # a sample does not change with what else is in the batch.
    score = -entropy + config.entropy_noise * uniform[..., vocab]
    accepted = jax.vmap(functools.partial(entropy_bounded_count, bound=config.entropy_bound))(
        entropy, masked)
    num_unmask = jnp.minimum(num_masked, jnp.maximum(num_unmask, accepted))
  score = jnp.where(masked, score, -jnp.inf)
  unmask = jax.vmap(top_count_mask)(score, num_unmask) & masked

  # 2. Edit visible positions the model now confidently disagrees with.
  editable = ~masked if config.edit_fixed else ~masked & ~fixed
  edit = jnp.zeros_like(masked)
  if config.editing:
    current = jnp.where(masked, 0, tokens)
    p_current = jnp.exp(jnp.take_along_axis(log_probs, current[..., None], axis=-1)[..., 0])
    p_proposal = jnp.exp(logp_proposal)
    candidates = (editable & (proposal != tokens) & (p_proposal > config.edit_threshold)
                  & (p_proposal > p_current + config.edit_margin) & xs["edit_active"])
    gain = jnp.where(candidates, p_proposal - p_current, -jnp.inf)
    cap = config.max_edits_per_step(length)
    edit = jax.vmap(top_count_mask, in_axes=(0, None))(gain, cap) & candidates

  # 3. ReMDM-style random re-masking of decoded positions (comparison policy).
  remask = jnp.zeros_like(masked)
  if config.remask_policy == "remdm":
    remask = (uniform[..., vocab + 1] < xs["remdm_sigma"]) & editable & ~edit

  new_tokens = jnp.where(unmask, proposal, tokens)
  new_tokens = jnp.where(edit, jnp.where(xs["edit_remasks"], mask_id, proposal), new_tokens)
  new_tokens = jnp.where(remask, mask_id, new_tokens)

  per_step = dict(
      num_unmasked=jnp.sum(unmask, axis=-1, dtype=jnp.int32),
      num_edited=jnp.sum(edit, axis=-1, dtype=jnp.int32),
      num_remasked=jnp.sum(remask | (edit & xs["edit_remasks"]), axis=-1, dtype=jnp.int32),
      num_masked=jnp.sum(new_tokens == mask_id, axis=-1, dtype=jnp.int32))
  if config.record_trajectory:
    per_step.update(traj_tokens=new_tokens, traj_unmasked=unmask, traj_edited=edit)
  return state.replace(tokens=new_tokens), per_step


@functools.partial(jax.jit, static_argnames=("logits_fn", "config"))
def sample(logits_fn: LogitsFn, rng: jax.Array, tokens: jax.Array, config: SamplerConfig, *,
           context: Any = None, fixed: Optional[jax.Array] = None,
           sample_index: Optional[jax.Array] = None) -> SampleOutput:
  """Fills every `config.mask_id` position of `tokens`; see the module docstring for logits_fn.

  Args:
    logits_fn: `logits_fn(context, tokens [R, L], info: StepInfo) -> logits [R, L, V]`. A static
      argument: pass the same function object each call (not a fresh lambda) to reuse the
      compiled program.
    rng: a PRNG key; sample b uses `fold_in(rng, sample_index[b])`.
    tokens: int [B, h, w] or [B, L]; mask_id where unknown.
    config: `SamplerConfig` (static).
    context: pytree handed to `logits_fn` unchanged (traced: params, text embeddings, ...).
    fixed: bool like `tokens`; positions never edited or re-masked (unless config.edit_fixed).
      Masked positions are filled regardless. Default: every position given in `tokens`.
    sample_index: int [B], global index of each sample (default arange(B)).

  Returns:
    `SampleOutput(tokens, trajectory, stats)`: tokens like the input with no mask left;
    trajectory `Trajectory` of [S, B, ...] arrays (S = num_steps + num_edit_passes) or None;
    stats: int32 [S, B] `num_unmasked`, `num_edited`, `num_remasked`, `num_masked` (after the
    step), and float32 [S] `temperature`, `guidance`.
  """
  if tokens.ndim not in (2, 3):
    raise ValueError(f"tokens must be [B, L] or [B, h, w], got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer, got {tokens.dtype}")
  grid_shape = tokens.shape[1:]
  batch = tokens.shape[0]
  flat = tokens.reshape(batch, -1).astype(jnp.int32)
  masked = flat == config.mask_id
  if fixed is None:
    fixed_flat = ~masked
  else:
    if fixed.shape != tokens.shape:
      raise ValueError(f"fixed has shape {fixed.shape}, tokens {tokens.shape}")
    fixed_flat = fixed.reshape(batch, -1).astype(bool) & ~masked
  if sample_index is None:
    sample_index = jnp.arange(batch, dtype=jnp.int32)
  elif sample_index.shape != (batch,):
    raise ValueError(f"sample_index must have shape ({batch},), got {sample_index.shape}")

  # The only threefry call: one 64-bit seed per sample; steps hash it with their index.
  seeds = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(rng, i), (2,), jnp.uint32))(
      sample_index)

  if config.unmask_policy in ("halton", "stratified"):
    height, width = grid_shape if len(grid_shape) == 2 else (1, grid_shape[0])
    rank = jnp.asarray(_halton_rank(height, width))
    if config.unmask_policy == "halton":
      order_rank = jnp.broadcast_to(rank.reshape(-1), flat.shape)
    else:
      # A random per-sample torus shift of the Halton order: still spread out, not identical.
      def shifted(seed):
        # Seeds of a step index the scan never reaches, so the shift is independent of steps.
        shift = counter_uniform(step_seed(seed, config.total_steps), (1, 2))[0]
        shift = (shift * jnp.array([height, width])).astype(jnp.int32)
        dr, dc = shift[0], shift[1]
        rows = (jnp.arange(height)[:, None] + dr) % height
        cols = (jnp.arange(width)[None, :] + dc) % width
        return rank[rows, cols].reshape(-1)
      order_rank = jax.vmap(shifted)(seeds)
    order_rank = order_rank.astype(jnp.float32)
  else:
    order_rank = jnp.zeros(flat.shape, jnp.float32)

  state = SamplerState(tokens=flat, fixed=fixed_flat, seeds=seeds,
                       num_initial_masked=jnp.sum(masked, axis=-1, dtype=jnp.int32),
                       order_rank=order_rank)
  table = step_table(config)
  xs = {name: jnp.asarray(value) for name, value in table.items()}
  body = functools.partial(_sample_step, logits_fn=logits_fn, context=context, config=config)
  state, per_step = jax.lax.scan(body, state, xs)

  unflatten = lambda x: x.reshape(x.shape[0], batch, *grid_shape)
  trajectory = None
  if config.record_trajectory:
    trajectory = Trajectory(tokens=unflatten(per_step.pop("traj_tokens")),
                            unmasked=unflatten(per_step.pop("traj_unmasked")),
                            edited=unflatten(per_step.pop("traj_edited")))
  stats = dict(per_step, temperature=xs["temperature"], guidance=xs["guidance"])
  return SampleOutput(tokens=state.tokens.reshape(tokens.shape), trajectory=trajectory,
                      stats=stats)
