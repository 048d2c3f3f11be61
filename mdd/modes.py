"""`config.mode` -> the function that runs it, imported only when used.

Kept out of `mdd/main.py` (which defines absl flags when imported) so stages can look each
other up, e.g. the pipeline running every stage.
"""

import importlib
import importlib.util

# config.mode -> "module:function(config, workdir)". Each is imported only when used, so a
# mode's heavy dependencies never load for another.
MODES = {
    "pipeline": "mdd.pipeline:run",
    "train_tokenizer": "mdd.train.tokenizer_task:run",
    "pretokenize": "mdd.pretokenize:run",
    "train": "mdd.train.denoiser_task:run",
    "sample": "mdd.sample_cli:run",
    "eval": "mdd.eval.run:run",
}


def resolve_mode(mode: str):
  """The function that runs `mode`."""
  if mode not in MODES:
    raise ValueError(f"config.mode={mode!r} is not one of {sorted(MODES)}")
  module_name, fn_name = MODES[mode].split(":")
  if importlib.util.find_spec(module_name) is None:
    raise ValueError(f"config.mode={mode!r} is not available in this build ({module_name} is "
                     "missing)")
  return getattr(importlib.import_module(module_name), fn_name)
