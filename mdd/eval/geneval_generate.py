r"""Generate images for any GenEval `evaluation_metadata.jsonl` into GenEval's layout.

  python -m mdd.eval.geneval_generate METADATA.jsonl --outdir OUT --workdir DIR \
      [--generator model|groundtruth] [--images_per_prompt 4] [--batch_size 64] [--seed 0]

writes `OUT/<05d>/metadata.jsonl` + `OUT/<05d>/samples/<04d>.png` (see `geneval_layout`), which
GenEval's `evaluation/evaluate_images.py OUT` scores on a machine with its detector, and which
`python -m mdd.eval.shapes_geneval --workdir DIR --layout OUT` scores offline. The
`groundtruth` generator renders the metadata with ShapeGen (ShapeGen vocabulary only); `model`
uses `mdd.inference.generator.model_generate_fn(workdir)`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mdd.data import prompts as prompts_lib
from mdd.eval import geneval_layout
from mdd.eval import shapes_geneval


def generate(metadata_file: str, outdir: str, generate_fn: geneval_layout.GenerateFn,
             images_per_prompt: int = 4, batch_size: int = 64, seed: int = 0) -> str:
  """Generates every line of `metadata_file` into the GenEval layout under `outdir`."""
  metadata = prompts_lib.read_metadata_file(metadata_file)
  return geneval_layout.generate_layout(generate_fn, metadata, outdir, images_per_prompt,
                                        batch_size, seed)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m mdd.eval.geneval_generate",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("metadata_file", help="GenEval evaluation_metadata.jsonl")
  parser.add_argument("--outdir", required=True)
  parser.add_argument("--workdir", default=None, help="run directory of the model")
  parser.add_argument("--generator", default="model", choices=("model", "groundtruth"))
  parser.add_argument("--images_per_prompt", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--resolution", type=int, default=32, help="groundtruth renders only")
  args = parser.parse_args(argv)
  try:
    metadata = prompts_lib.read_metadata_file(args.metadata_file)
    generate_fn = shapes_geneval.load_generator(args.generator, args.workdir, metadata,
                                                args.resolution)
  except ValueError as e:
    sys.exit(f"error: {e}")
  generate(args.metadata_file, args.outdir, generate_fn, args.images_per_prompt,
           args.batch_size, args.seed)
  print(f"wrote {len(metadata)} prompt folders to {args.outdir}")


if __name__ == "__main__":
  main(sys.argv[1:])
