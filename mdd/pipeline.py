"""`--config.mode=pipeline`: every stage in order, each resuming or skipping what is done.

train tokenizer -> pretokenize -> train denoiser -> sample -> eval. Each stage is the same
function its own mode runs, so `--config.mode=train` after a pipeline run continues exactly where
the pipeline's denoiser stage stopped.
"""

from __future__ import annotations

import logging
import time

STAGES = ("train_tokenizer", "pretokenize", "train", "sample", "eval")


def run(config, workdir: str):
  from mdd import modes  # pylint: disable=import-outside-toplevel
  stages = tuple(s.strip() for s in str(config.get("pipeline_stages", "") or
                                         ",".join(STAGES)).split(",") if s.strip())
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"pipeline_stages: unknown stages {unknown}; choose from {STAGES}")
  # Resolve every stage first, so a missing one fails before hours of training.
  runners = [(stage, modes.resolve_mode(stage)) for stage in stages]
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
