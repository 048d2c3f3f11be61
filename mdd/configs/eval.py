"""Default settings of the evaluations (`--config.mode=eval`): ShapeGenEval, layouts, FID.

Experiment configs put this under `config.eval` and override fields, e.g.
`--config.eval.shapes_geneval.which=all` or `--config.eval.fid.weights=/path/pt_inception.pth`.
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Which evaluations `--config.mode=eval` runs, in order: shapes_geneval | geneval | dpg | fid.
  c.evals = ("shapes_geneval",)

  # Offline GenEval over ShapeGen (mdd.eval.shapes_geneval) -> WORKDIR/eval/shapes_geneval.json.
  c.shapes_geneval = ml_collections.ConfigDict()
  c.shapes_geneval.which = "main"          # main | heldout | all
  c.shapes_geneval.images_per_prompt = 4   # GenEval's 4 samples per prompt
  c.shapes_geneval.batch_size = 64         # (prompt, seed) pairs per generate_fn call
  c.shapes_geneval.seed = 0
  # Detector thresholds (ScorerSettings): calibrated on renders, reconstructions and noise.
  c.shapes_geneval.coverage_threshold = 0.5
  c.shapes_geneval.min_area_fraction = 0.01815  # 3/4 of the smallest ShapeGen object / side^2
  c.shapes_geneval.min_confidence = 0.7
  c.shapes_geneval.counting_min_confidence = 0.75
  c.shapes_geneval.position_margin = 0.1

  # Real GenEval / DPG-Bench: only write the layouts (their scorers run elsewhere).
  c.geneval = ml_collections.ConfigDict()
  c.geneval.metadata_file = ""  # GenEval's prompts/evaluation_metadata.jsonl
  c.geneval.outdir = ""         # default: WORKDIR/eval/geneval
  c.geneval.images_per_prompt = 4
  c.geneval.batch_size = 64
  c.geneval.seed = 0

  c.dpg = ml_collections.ConfigDict()
  c.dpg.prompts_dir = ""        # DPG-Bench's prompts/ folder of .txt files
  c.dpg.outdir = ""             # default: WORKDIR/eval/dpg
  c.dpg.batch_size = 64
  c.dpg.seed = 0

  # FID with the FID Inception (pytorch-fid weights, local file); >= 2048 samples.
  c.fid = ml_collections.ConfigDict()
  c.fid.weights = ""            # pt_inception-2015-12-05-6726825d.pth or .safetensors/.npz
  c.fid.ref_stats = ""          # .npz with mu/sigma (e.g. an ADM reference batch)
  c.fid.num_samples = 2048
  c.fid.batch_size = 50
  return c
