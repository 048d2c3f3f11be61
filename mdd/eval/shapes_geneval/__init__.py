"""ShapeGenEval: GenEval's rules over ShapeGen's shapes and colours, scored offline.

  detector.py  `detect_objects`: a deterministic detector for ShapeGen pictures (palette colour
               unmixing, colour segmentation, shapes named by their silhouettes' symmetry and
               checked by their outlines, solidity tests; the thresholds are `ScorerSettings`,
               the version every result records `SCORER_VERSION`)
  rules.py     `score_image`: GenEval's rules (its `evaluate_images.py`) over those detections
  runner.py    `score_layout` and `run`: GenEval's output layout generated, scored and written to
               `workdir/eval/shapes_geneval.json`; the reference generators; the CLI
  agreement.py `--agreement`: the scorer against labels given by eye (a fixture in tests/fixtures,
               labelled by the rules of AGREEMENT.md): agreement, precision, recall per tag
  __main__.py  `python -m mdd.eval.shapes_geneval` (runner's CLI, or agreement's with --agreement)

The prompt set (GenEval's six tags and phrasing over `palette.SHAPES` x `palette.COLOR_NAMES`,
in GenEval's `evaluation_metadata.jsonl` schema: `main`, 504 prompts that avoid every held-out
pair/relation of ShapeGen; `heldout`, 120 prompts made only of them; `reworded`, `main` in other
training-caption wording; `color_attr_new`, colour-attribute combinations `main` does not use)
is `mdd.data.prompts`;
`PROMPT_SETS`, `load_prompts` and `read_metadata_file` are re-exported here.

CLI (results in DIR/eval/shapes_geneval.json for the model, shapes_geneval_<generator>.json
for the references, shapes_geneval_layout.json for a scored layout; none overwrites another):
  python -m mdd.eval.shapes_geneval --workdir DIR --generator=groundtruth     # renders: 1.0
  python -m mdd.eval.shapes_geneval --workdir DIR --generator=reconstruction  # tokenizer ceiling
  python -m mdd.eval.shapes_geneval --workdir DIR --generator=model           # needs a checkpoint
  python -m mdd.eval.shapes_geneval --workdir DIR --layout GENEVAL_OUT_DIR    # score a layout
  python -m mdd.eval.shapes_geneval --agreement [--out=FILE.json]             # vs. labels by eye
"""

from mdd.data.prompts import PROMPT_SETS, load_prompts, read_metadata_file
from mdd.eval.shapes_geneval.detector import (SCORER_VERSION, Detection, ScorerSettings,
                                              detect_objects, min_object_side)
from mdd.eval.shapes_geneval.rules import evaluate_detections, relative_position, score_image
from mdd.eval.shapes_geneval.runner import (GenerateFn, evaluate, groundtruth_generate_fn,
                                            load_generator, main, markdown_table, run,
                                            run_from_config, score_layout, settings_from_config,
                                            tokenizer_roundtrip)

__all__ = [
    "PROMPT_SETS", "load_prompts", "read_metadata_file", "SCORER_VERSION", "Detection",
    "ScorerSettings", "detect_objects", "min_object_side", "evaluate_detections",
    "relative_position", "score_image", "GenerateFn",
    "evaluate", "groundtruth_generate_fn", "load_generator", "main", "markdown_table", "run",
    "run_from_config", "score_layout", "settings_from_config", "tokenizer_roundtrip",
]
