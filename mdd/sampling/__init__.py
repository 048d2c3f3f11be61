"""The unmask-and-edit sampler: one `lax.scan` with classifier-free guidance and token editing.

  sampler.py   `sample(logits_fn, rng, tokens, config)`, the scan and its step
  config.py    `SamplerConfig` (static settings, the section's defaults) and the step tables
  policies.py  unmask policies by name (`UNMASK_POLICIES`)
  noise.py     per-sample counter-based random numbers
  editing.py   inpainting / outpainting setups on token grids
  visualize.py image grids and trajectory GIFs
"""

from mdd.sampling.config import (SamplerConfig, default_config, mask_ratio_schedule,
                                 step_table)
from mdd.sampling.noise import counter_uniform, step_seed
from mdd.sampling.policies import (UNMASK_POLICIES, entropy_bounded_count, halton_order)
from mdd.sampling.sampler import (LogitsFn, SampleOutput, SamplerState, StepInfo, Trajectory,
                                  filter_logits, sample, top_count_mask)

__all__ = [
    "SamplerConfig", "default_config", "mask_ratio_schedule", "step_table", "counter_uniform",
    "step_seed", "UNMASK_POLICIES", "entropy_bounded_count", "halton_order", "LogitsFn",
    "SampleOutput", "SamplerState", "StepInfo", "Trajectory", "filter_logits", "sample",
    "top_count_mask",
]
