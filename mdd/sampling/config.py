"""Static settings of the unmask-and-edit sampler and the per-step tables they compile to.

`SamplerConfig` is a frozen (hashable) dataclass, a `jit` static argument; its field defaults are
the defaults of the `config.sampler` section (`default_config()`), so they are written once.
Everything that varies over steps (mask ratio, temperature, guidance, noise, edit windows) is a
host-side table (`step_table`) fed to the scan: a config compiles to one program per shape.
"""

import dataclasses
import functools

import ml_collections
import numpy as np

from mdd.sampling import policies

SCHEDULES = ("cosine", "linear", "shifted", "list")
EDIT_MODES = ("overwrite", "remask")
REMASK_POLICIES = ("none", "remdm")
RAMPS = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Static sampler settings; hashable, so it is a `jit` static argument.

  Build it from the ml_collections section with `SamplerConfig.from_config(cfg)`; the config
  section's defaults are these (`default_config()`), each field described in `FIELD_DOCS`.
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
    check(self.unmask_policy in policies.UNMASK_POLICIES,
          f"unmask_policy {self.unmask_policy!r} not in {sorted(policies.UNMASK_POLICIES)}")
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



# What each field means (shown next to the defaults in `default_config`'s docstring and docs).
FIELD_DOCS = {
    "mask_id": "token id at unknown positions; -1 in a config = the tokenizer's codebook size",
    "num_steps": "unmask steps (the scan also runs num_edit_passes after them)",
    "schedule": "fraction of the initially masked positions still masked after step i: "
                "cosine | linear | shifted | list",
    "schedule_shift": "shifted: sigma(t) = s t / (1 + (s - 1) t), t: 1 -> 0 (LaViDa-O)",
    "schedule_mask_ratios": "list: num_steps non-increasing ratios (the last is forced to 0)",
    "unmask_policy": "which masked positions to fill: a name in policies.UNMASK_POLICIES",
    "confidence_noise": "MaskGIT: score = log p + tau_t * Gumbel, tau_t = tau_0 (1 - t/T)",
    "entropy_bound": "entropy: take the lowest-entropy prefix with sum H - max H <= this",
    "entropy_noise": "entropy: per-seed uniform jitter (nats) that orders near-ties",
    "temperature": "proposal temperature (0 = argmax)",
    "temperature_end": "reached at the last step by the linear / cosine schedules",
    "temperature_schedule": "constant | linear | cosine",
    "top_k": "0 = off",
    "top_p": "1 = off",
    "guidance_scale": "classifier-free guidance (1 + w) c - w u; 0 = no unconditional rows",
    "guidance_schedule": "constant | linear | cosine ramp of w from 0 over the steps",
    "guidance_interval": "apply w only where step / num_steps is in [lo, hi)",
    "edit_threshold": "edit a visible position when p(new) > this (>= 1 disables editing)",
    "edit_margin": "... and p(new) > p(current) + this",
    "edit_max_fraction": "at most this fraction of the grid per step (>= 1 position)",
    "edit_start_step": "editing window [start, end) over the unmask steps",
    "edit_end_step": "-1 = num_steps",
    "num_edit_passes": "post-fill edit passes (always active)",
    "edit_mode": "overwrite | remask (refilled by a later step)",
    "edit_fixed": "allow editing user-given (fixed) tokens",
    "remask_policy": "ReMDM-style stochastic re-masking, a comparison policy: none | remdm",
    "remdm_eta": "remdm: sigma = min(eta, (1 - a_s) / a_t)",
    "record_trajectory": "keep per-step tokens and masks (for trajectory.gif)",
}


def default_config() -> ml_collections.ConfigDict:
  """The `config.sampler` section: `SamplerConfig`'s defaults (mask_id -1: set from the
  tokenizer by whoever builds the sampler)."""
  values = {f.name: f.default for f in dataclasses.fields(SamplerConfig)
            if f.default is not dataclasses.MISSING}
  return ml_collections.ConfigDict(dict(mask_id=-1, **values))


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
