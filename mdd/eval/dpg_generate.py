r"""Generate DPG-Bench grids: one 2x2 grid PNG per prompt file, named after it.

  python -m mdd.eval.dpg_generate --prompts_dir DPG/prompts --outdir OUT --workdir DIR \
      [--batch_size 64] [--seed 0]

DPG-Bench's own VQA scorer then runs on OUT elsewhere (it cannot run offline here); pass it the
generation resolution so it cuts the grids back into samples.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mdd.eval import dpg_layout
from mdd.inference import generator as generators


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mdd.eval.dpg_generate",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--prompts_dir", required=True, help="folder of DPG-Bench .txt prompts")
  parser.add_argument("--outdir", required=True)
  parser.add_argument("--workdir", required=True, help="run directory of the model")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    dpg_layout.read_prompt_files(args.prompts_dir)
    generate_fn = generators.model_generate_fn(args.workdir)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  paths = dpg_layout.generate_grids(generate_fn, args.prompts_dir, args.outdir,
                                    args.batch_size, args.seed)
  print(f"wrote {len(paths)} grids to {args.outdir}")


if __name__ == "__main__":
  main(sys.argv[1:])
