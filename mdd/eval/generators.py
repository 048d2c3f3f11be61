"""Generators the evaluation CLIs call: `model_generate_fn(workdir)` samples a trained workdir."""

from __future__ import annotations


def model_generate_fn(workdir: str, config=None, **sampler_overrides):
  """`generate_fn(prompts, seeds) -> uint8 [B, H, W, 3]` from DIR's tokenizer + denoiser.

  Uses the run's config (DIR/config.json) unless one is given, and its sampler section with
  `sampler_overrides` applied (e.g. `edit_threshold=1.0` to switch editing off).
  """
  from mdd.inference import generator as generation  # pylint: disable=import-outside-toplevel
  gen = generation.Generator.from_workdir(workdir, config)
  batch_size = int(gen.config.get("eval", {}).get("shapes_geneval", {}).get("batch_size", 64))
  return gen.generate_fn(batch_size=batch_size, **sampler_overrides)
