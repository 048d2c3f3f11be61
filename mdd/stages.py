"""The stages a run is made of, by `config.mode`, and the pipeline that runs them in order.

train_tokenizer -> pretokenize -> train (the denoiser) -> sample -> eval. Each stage is a
function `run(config, workdir)` in the layer below, imported only when used (a stage's heavy
dependencies never load for another). `--config.mode=pipeline` runs the stages listed in
`config.pipeline_stages`, each resuming or skipping what is done, so `--config.mode=train` after
a pipeline run continues exactly where the pipeline's denoiser stage stopped. `TOOLS` are
modes that inspect a run without being a stage of it (`plan`: the train step's memory).
"""

from __future__ import annotations

import importlib
import logging
import time

# config.mode -> "module:function(config, workdir)".
STAGES = {
    "train_tokenizer": "mdd.train.tokenizer:run",
    "pretokenize": "mdd.train.pretokenize:run",
    "train": "mdd.train.denoiser:run",
    "sample": "mdd.inference.sample:run",
    "eval": "mdd.eval.run:run",
}
# Modes that inspect a run instead of being one of its stages (never part of a pipeline).
TOOLS = {
    "plan": "mdd.plan:run",  # per-device memory of the train step; refuses what cannot fit
}
PIPELINE = "pipeline"
MODES = (PIPELINE, *STAGES, *TOOLS)

# The config sections each stage reads (besides `seed`); `mdd.validate` checks they exist.
SECTIONS = {
    "train_tokenizer": ("mesh", "data", "tokenizer", "denoiser_train"),
    "pretokenize": ("data", "tokenizer"),
    "train": ("mesh", "data", "denoiser", "text", "masking", "loss", "denoiser_train",
              "sampler"),
    "sample": ("mesh", "data", "denoiser", "text", "masking", "loss", "denoiser_train",
               "sampler", "sample", "eval"),
    "eval": ("mesh", "data", "denoiser", "text", "masking", "loss", "denoiser_train", "sampler",
             "eval"),
    "plan": ("mesh", "data", "tokenizer", "denoiser", "text", "masking", "loss", "denoiser_train",
             "plan"),
}


def stages_of(config) -> tuple[str, ...]:
  """The stages `config.mode` runs."""
  return pipeline_stages(config) if config.get("mode") == PIPELINE else (config.get("mode"),)


def resolve_mode(mode: str):
  """The function that runs `mode` (`pipeline` or one stage)."""
  if mode == PIPELINE:
    return run_pipeline
  if mode not in STAGES and mode not in TOOLS:
    raise ValueError(f"config.mode={mode!r} is not one of {list(MODES)}")
  module_name, fn_name = {**STAGES, **TOOLS}[mode].split(":")
  return getattr(importlib.import_module(module_name), fn_name)


def pipeline_stages(config) -> tuple[str, ...]:
  """The stages `config.mode=pipeline` runs, in order (all of them unless
  `config.pipeline_stages` lists some)."""
  listed = str(config.get("pipeline_stages", "") or ",".join(STAGES))
  stages = tuple(s.strip() for s in listed.split(",") if s.strip())
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"pipeline_stages: unknown stages {unknown}; choose from {list(STAGES)}")
  return stages


def run_pipeline(config, workdir: str) -> dict[str, float]:
  """Runs every stage of `pipeline_stages(config)`; returns seconds per stage."""
  # Resolve every stage first, so a missing one fails before hours of training.
  runners = [(stage, resolve_mode(stage)) for stage in pipeline_stages(config)]
  timings = {}
  for stage, run_fn in runners:
    start = time.time()
    print(f"=== pipeline: {stage} ===", flush=True)
    run_fn(config, workdir)
    timings[stage] = time.time() - start
    logging.info("pipeline: %s took %.1fs", stage, timings[stage])
  print("=== pipeline done: " + ", ".join(f"{s} {t:.0f}s" for s, t in timings.items()) + " ===",
        flush=True)
  return timings
