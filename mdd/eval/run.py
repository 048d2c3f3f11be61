"""`--config.mode=eval`: the evaluations listed in `config.eval.evals`, on the trained workdir.

shapes_geneval -> DIR/eval/shapes_geneval.json (+ GenEval layouts under DIR/eval/);
geneval / dpg  -> layouts for the official scorers (metadata / prompt files from the config);
fid            -> DIR/eval/fid.json (needs local FID Inception weights and reference stats).
"""

from __future__ import annotations

import os

from mdd.train import loop


def run(config, workdir: str) -> dict:
  from mdd import generation  # pylint: disable=import-outside-toplevel
  eval_cfg = config.eval
  evals = tuple(eval_cfg.evals)
  known = ("shapes_geneval", "geneval", "dpg", "fid")
  unknown = [e for e in evals if e not in known]
  if unknown:
    raise ValueError(f"eval.evals: unknown {unknown}; choose from {known}")
  if "geneval" in evals and not eval_cfg.geneval.metadata_file:
    raise ValueError("eval.geneval.metadata_file is required for the geneval layout")
  if "dpg" in evals and not eval_cfg.dpg.prompts_dir:
    raise ValueError("eval.dpg.prompts_dir is required for the DPG-Bench layout")
  if "fid" in evals and not (eval_cfg.fid.weights and eval_cfg.fid.ref_stats):
    raise ValueError("eval.fid.weights and eval.fid.ref_stats are required for FID")

  gen = generation.Generator.from_workdir(workdir, config)
  results = {}
  if "shapes_geneval" in evals:
    from mdd.eval import shapes_geneval  # pylint: disable=import-outside-toplevel
    section = eval_cfg.shapes_geneval
    result = shapes_geneval.run_from_config(gen.generate_fn(int(section.batch_size)), workdir,
                                            section)
    results["shapes_geneval"] = result
    tags = " ".join(f"{k}={v:.3f}" for k, v in sorted(result["tags"].items()))
    print(f"ShapeGenEval overall={result['overall']:.3f} ({result['num_images']} images) {tags}",
          flush=True)
  if "geneval" in evals:
    import json  # pylint: disable=import-outside-toplevel
    from mdd.eval import geneval_layout  # pylint: disable=import-outside-toplevel
    section = eval_cfg.geneval
    with open(section.metadata_file, encoding="utf-8") as f:
      metadata = [json.loads(line) for line in f if line.strip()]
    outdir = section.outdir or os.path.join(workdir, "eval", "geneval")
    results["geneval"] = geneval_layout.generate_layout(
        gen.generate_fn(int(section.batch_size)), metadata, outdir,
        images_per_prompt=int(section.images_per_prompt), batch_size=int(section.batch_size),
        seed=int(section.seed))
  if "dpg" in evals:
    from mdd.eval import dpg_layout  # pylint: disable=import-outside-toplevel
    section = eval_cfg.dpg
    outdir = section.outdir or os.path.join(workdir, "eval", "dpg")
    results["dpg"] = dpg_layout.generate_grids(gen.generate_fn(int(section.batch_size)),
                                               section.prompts_dir, outdir,
                                               batch_size=int(section.batch_size),
                                               seed=int(section.seed))
  if "fid" in evals:
    from mdd.eval import fid as fid_lib  # pylint: disable=import-outside-toplevel
    from mdd.eval import shapes_geneval  # pylint: disable=import-outside-toplevel
    section = eval_cfg.fid
    prompts = [m["prompt"] for m in shapes_geneval.load_prompts("main")]
    n = int(section.num_samples)
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    images = gen.generate_fn(int(section.batch_size))(prompts, list(range(n)))
    feature_fn = fid_lib.inception_feature_fn(section.weights, int(section.batch_size))
    batches = (images[i:i + int(section.batch_size)] for i in range(0, n, int(section.batch_size)))
    mu, sigma = fid_lib.compute_statistics(fid_lib.features_of(batches, feature_fn))
    value = fid_lib.frechet_distance(mu, sigma, *fid_lib.load_statistics(section.ref_stats))
    results["fid"] = {"fid": float(value), "num_images": int(len(images))}
    loop.write_json_atomic(os.path.join(workdir, "eval", "fid.json"), results["fid"])
    print(f"FID {value:.3f} over {len(images)} images", flush=True)
  return results
