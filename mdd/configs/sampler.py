"""Default hyper-parameters of the unmask-and-edit sampler (`mdd.sampler`).

Experiment configs put this section at `config.sampler` and override fields; the lead builds the
static `SamplerConfig` with `SamplerConfig.from_config(config.sampler, mask_id=...)`.
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The sampler section; every field is documented next to its default."""
  c = ml_collections.ConfigDict()
  # Token id at unknown positions; -1 = set by the caller from the tokenizer (codebook size).
  c.mask_id = -1
  c.num_steps = 16             # unmask steps (the scan also runs num_edit_passes after them)

  # Mask schedule: fraction of the initially masked positions still masked after step i.
  c.schedule = "cosine"        # cosine | linear | shifted | list
  c.schedule_shift = 5.0       # shifted: sigma(t) = s t / (1 + (s - 1) t), t: 1 -> 0 (LaViDa-O)
  c.schedule_mask_ratios = ()  # list: num_steps non-increasing ratios (the last is forced to 0)

  # Which masked positions to fill (>= 1 per step, all by the last step).
  c.unmask_policy = "confidence"  # confidence | halton | stratified | entropy
  c.confidence_noise = 4.5     # MaskGIT: score = log p + tau_t * Gumbel, tau_t = tau_0 (1 - t/T)
  c.entropy_bound = 0.1        # entropy: take the lowest-entropy prefix with sum H - max H <= this
  c.entropy_noise = 0.05       # entropy: per-seed uniform jitter (nats) that orders near-ties

  # Proposal distribution.
  c.temperature = 1.0          # 0 = argmax
  c.temperature_end = 1.0      # reached at the last step by the linear / cosine schedules
  c.temperature_schedule = "constant"  # constant | linear | cosine
  c.top_k = 0                  # 0 = off
  c.top_p = 1.0                # 1 = off

  # Classifier-free guidance (1 + w) c - w u, conditional and unconditional rows in one call.
  c.guidance_scale = 0.0       # 0 = no unconditional rows at all
  c.guidance_schedule = "constant"  # constant | linear | cosine ramp of w from 0 over the steps
  c.guidance_interval = (0.0, 1.0)  # apply w only where step / num_steps is in [lo, hi)

  # Token editing of visible (non-fixed) positions.
  # Edit when p(new) > this (>= 1 disables editing). 0.5 (was 0.9, which almost never fires):
  # edits off cost the GPU config 0.079 / 0.045 on two trainings, the CPU default 0.001-0.011
  # (docs/runs/shapes_gpu_18k_2026-11-29_s11.json); LLaDA 2.1 uses ~0.5-0.7.
  c.edit_threshold = 0.5
  c.edit_margin = 0.0          # ... and p(new) > p(current) + this
  c.edit_max_fraction = 0.05   # at most this fraction of the grid per step (>= 1 position)
  c.edit_start_step = 0        # editing window [start, end) over the unmask steps
  c.edit_end_step = -1         # -1 = num_steps
  c.num_edit_passes = 2        # post-fill edit passes (always active)
  c.edit_mode = "overwrite"    # overwrite | remask (refilled by a later step)
  c.edit_fixed = False         # allow editing user-given (fixed) tokens

  # ReMDM-style stochastic re-masking, a comparison policy: sigma = min(eta, (1-a_s)/a_t).
  c.remask_policy = "none"     # none | remdm
  c.remdm_eta = 0.008

  c.record_trajectory = True   # keep per-step tokens and masks (for trajectory.gif)
  return c
