"""The evaluations `--config.mode=eval` can run, by name (`config.eval.evals`).

Each entry names a function `evaluate(generator, section, workdir) -> dict` (the trained
`mdd.inference.generator.Generator`, the config section `config.eval.<name>`, the run folder)
and the section's fields that must be set. Adding an evaluation is one module with its
`evaluate` plus one entry here; `mdd.validate` reads this table to check a config before
anything runs.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Evaluation:
  target: str                     # "module:function"
  required: tuple[str, ...] = ()  # fields of config.eval.<name> that must be non-empty

  def resolve(self):
    module, _, name = self.target.partition(":")
    return getattr(importlib.import_module(module), name)


EVALS: dict[str, Evaluation] = {
    # Offline GenEval over ShapeGen -> DIR/eval/shapes_geneval.json.
    "shapes_geneval": Evaluation("mdd.eval.shapes_geneval:evaluate"),
    # Layouts for the official GenEval / DPG-Bench scorers (which run elsewhere).
    "geneval": Evaluation("mdd.eval.geneval_layout:evaluate", required=("metadata_file",)),
    "dpg": Evaluation("mdd.eval.dpg_layout:evaluate", required=("prompts_dir",)),
    # FID with local FID-Inception weights and reference statistics -> DIR/eval/fid.json.
    "fid": Evaluation("mdd.eval.fid:evaluate", required=("weights", "ref_stats")),
}


def problems(eval_cfg) -> list[str]:
  """One line per problem of the `eval` section (unknown names, missing required fields)."""
  out = []
  evals = tuple(eval_cfg.get("evals", ()))
  unknown = [e for e in evals if e not in EVALS]
  if unknown:
    out.append(f"eval.evals: unknown {unknown}; choose from {sorted(EVALS)}")
  for name in evals:
    if name not in EVALS:
      continue
    section = eval_cfg.get(name, None)
    for field in EVALS[name].required:
      if section is None or not section.get(field, ""):
        out.append(f"eval.{name}.{field}: required when eval.evals includes {name!r}")
  return out
