"""`--config.mode=eval`: the evaluations listed in `config.eval.evals`, on the trained workdir.

The names and what each needs are in `mdd.eval.registry.EVALS`; each evaluation writes its own
results under DIR/eval/ and returns them.

In a job of several processes every process runs this with the same config: the model is
restored onto the train stage's mesh (`Generator.from_workdir`), all processes generate
together, process 0 alone writes each file, and every process returns the same results.
"""

from __future__ import annotations

from mdd.eval import registry
from mdd.inference import generator as generator_lib


def run(config, workdir: str) -> dict:
  problems = registry.problems(config.eval)
  if problems:
    raise ValueError(problems[0])
  gen = generator_lib.Generator.from_workdir(workdir, config)
  return {name: registry.EVALS[name].resolve()(gen, config.eval[name], workdir)
          for name in tuple(config.eval.evals)}
