"""ShapeGenEval's runner: layouts generated and scored, the reference generators, the CLI.

`score_layout(dir)` reads GenEval's output layout (`<05d>/metadata.jsonl`,
`<05d>/samples/<04d>.png`), `run(generate_fn, workdir)` generates into it and writes
`workdir/eval/shapes_geneval.json` ({"overall", "tags", "num_images", "markdown", ...});
overall = unweighted mean of the tag scores. `load_generator` gives the reference generators
(ShapeGen renders, the same through the workdir's tokenizer) and the trained model; `evaluate` is
the `shapes_geneval` entry of `mdd.eval.registry`; `main` is `python -m mdd.eval.shapes_geneval`.
Layouts and workdirs may be local or URLs (`gs://`): files go through `mdd.utils.fileio`.
In a job of several processes all of them generate, process 0 alone writes and scores (each
file once) and hands the scores to the others (`mdd.utils.sharding.on_main_process`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Sequence

import numpy as np

from mdd.data import palette
from mdd.data import shapes
from mdd.data.prompts import PROMPT_SETS, load_prompts
from mdd.eval.shapes_geneval.detector import SCORER_VERSION, ScorerSettings
from mdd.eval.shapes_geneval.rules import score_image
from mdd.utils import fileio

GenerateFn = Callable[[Sequence[str], Sequence[int]], np.ndarray]


def score_layout(outdir: str, settings: ScorerSettings = ScorerSettings(),
                 results_file: str | None = "results.jsonl") -> dict:
  """Scores a GenEval layout (`<05d>/metadata.jsonl` + `<05d>/samples/<04d>.png`).

  Returns {"overall", "tags": {tag: accuracy}, "num_images", "num_prompts",
  "correct_prompts" (fraction of prompts with at least one correct image), "scorer_version",
  "scorer" (the settings), "markdown"}; writes
  GenEval-style per-image results to `outdir/results_file` unless it is None.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from mdd.eval import geneval_layout  # pylint: disable=g-import-not-at-top
  entries = geneval_layout.read_layout(outdir)
  per_tag: dict[str, list[bool]] = {}
  prompt_ok, records = [], []
  for entry in tqdm(entries, desc="ShapeGenEval scoring", leave=False):
    metadata = entry["metadata"]
    any_ok = False
    for path in entry["images"]:
      image = geneval_layout.read_image(path)
      result = score_image(image, metadata, settings)
      per_tag.setdefault(metadata["tag"], []).append(result["correct"])
      any_ok |= result["correct"]
      records.append({"filename": os.path.relpath(path, outdir), "tag": metadata["tag"],
                      "prompt": metadata["prompt"], "correct": result["correct"],
                      "reason": result["reason"], "metadata": json.dumps(metadata),
                      "details": json.dumps(result["detections"])})
    prompt_ok.append(any_ok)
  if not records:
    raise ValueError(f"no images found in the GenEval layout {outdir!r}")
  tags = {tag: float(np.mean(per_tag[tag])) for tag in palette.TAGS if tag in per_tag}
  tags.update({tag: float(np.mean(v)) for tag, v in per_tag.items() if tag not in tags})
  summary = {"overall": float(np.mean(list(tags.values()))), "tags": tags,
             "num_images": len(records), "num_prompts": len(entries),
             "correct_prompts": float(np.mean(prompt_ok)),
             # Which scorer and thresholds made these numbers.
             "scorer_version": SCORER_VERSION, "scorer": dataclasses.asdict(settings)}
  summary["markdown"] = markdown_table(summary)
  if results_file:
    fileio.write_text_atomic(os.path.join(outdir, results_file),
                             "".join(json.dumps(record) + "\n" for record in records))
  return summary


_TAG_TITLES = {"single_object": "Single object", "two_object": "Two object",
               "counting": "Counting", "colors": "Colors", "position": "Position",
               "color_attr": "Color attribution"}


def markdown_table(summary: dict, name: str = "ShapeGenEval") -> str:
  """GenEval's results table (overall, then the tags) as markdown."""
  tags = list(summary["tags"])
  head = "| " + " | ".join([name, "Overall"] + [_TAG_TITLES.get(t, t) for t in tags]) + " |"
  rule = "| --- |" + " :---: |" * (len(tags) + 1)
  row = ("| " + " | ".join([f"{summary['num_images']} images", f"**{summary['overall']:.3f}**"]
                           + [f"{summary['tags'][t]:.3f}" for t in tags]) + " |")
  return "\n".join([head, rule, row])


def groundtruth_generate_fn(metadata: Sequence[dict], resolution: int,
                            transform: Callable[[np.ndarray], np.ndarray] | None = None
                            ) -> GenerateFn:
  """A `generate_fn` that renders each prompt's metadata with ShapeGen (the score's ceiling).

  Prompts are looked up by text, so `metadata` must hold every prompt that will be asked for.
  `transform(uint8 [B, H, W, 3]) -> uint8 [B, H, W, 3]`, e.g. the tokenizer's encode + decode,
  is applied to the renders: ShapeGenEval of reconstructions is the ceiling for a denoiser that
  decodes through that tokenizer.
  """
  by_prompt = {m["prompt"]: m for m in metadata}

  def generate(prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    images = []
    for prompt, seed in zip(prompts, seeds):
      if prompt not in by_prompt:
        raise ValueError(f"groundtruth generator has no metadata for prompt {prompt!r}")
      scene = shapes.scene_from_metadata(by_prompt[prompt], np.random.default_rng(int(seed)))
      images.append(shapes.render(scene, resolution))
    images = np.stack(images)
    return images if transform is None else np.asarray(transform(images))

  return generate


def load_generator(name: str, workdir: str | None, metadata: Sequence[dict],
                   resolution: int = 32) -> GenerateFn:
  """`groundtruth` (ShapeGen renders of the metadata), `reconstruction` (those renders through
  the workdir's tokenizer: the ceiling of any denoiser decoding with it) or `model` (the trained
  checkpoint)."""
  if name in ("groundtruth", "reconstruction"):
    transform = None
    if name == "reconstruction":
      if not workdir:
        raise ValueError("--generator=reconstruction needs --workdir with a trained tokenizer")
      transform = tokenizer_roundtrip(workdir)
    fn = groundtruth_generate_fn(metadata, resolution, transform=transform)
    fn.fingerprint = {"generator": name, "resolution": resolution}
    return fn
  if name == "model":
    # Imported here so that scoring layouts needs numpy only.
    from mdd.inference import generator as generators  # pylint: disable=g-import-not-at-top
    if not workdir:
      raise ValueError("--generator=model needs --workdir with a trained checkpoint")
    return generators.model_generate_fn(workdir)
  raise ValueError(f"unknown generator {name!r}; use 'groundtruth', 'reconstruction' or 'model'")


def tokenizer_roundtrip(workdir: str) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images -> the workdir tokenizer's encode + decode, as uint8."""
  from mdd import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  tokenizer = workdir_lib.Workdir(workdir).load_tokenizer()
  return lambda images: tokenizer.decode(tokenizer.encode(images))


def settings_from_config(cfg) -> ScorerSettings:
  """ScorerSettings from a config section with the fields of `mdd.defaults.eval_config`; a
  field that is neither a scorer threshold nor a run setting is an error, not ignored."""
  fields = {f.name for f in dataclasses.fields(ScorerSettings)}
  unknown = sorted(set(cfg) - fields - set(RUN_FIELDS))
  if unknown:
    raise ValueError(f"eval.shapes_geneval: unknown fields {unknown}; scorer thresholds are "
                     f"{sorted(fields)}")
  return ScorerSettings(**{name: float(cfg[name]) for name in fields if name in cfg})


# The section's fields that are not scorer thresholds.
RUN_FIELDS = ("which", "images_per_prompt", "batch_size", "seed")


def run(generate_fn: GenerateFn, workdir: str, images_per_prompt: int = 4,
        which: str = "main", batch_size: int = 64, seed: int = 0,
        settings: ScorerSettings = ScorerSettings(), generator_name: str = "") -> dict:
  """Generates the prompt set(s) into GenEval layouts, scores them, writes the JSON.

  `which`: a prompt set of `mdd.data.prompts.PROMPT_SETS` (main, heldout, reworded,
  color_attr_new) or "all" (main at the top level, every other set under its name).
  Layouts go to `workdir/eval/shapes_geneval/<set>/`; results to
  `workdir/eval/shapes_geneval.json`. `generate_fn(prompts, seeds) -> uint8 [B, H, W, 3]`.
  Reference generators (`generator_name` "groundtruth" / "reconstruction") write to
  `shapes_geneval_<name>/` and `shapes_geneval_<name>.json` instead, so measuring a ceiling in a
  trained workdir keeps the model's layout and scores. With several processes every process
  calls it and gets the result; process 0 writes the layouts, scores them and writes the JSON.
  """
  from mdd.eval import geneval_layout  # pylint: disable=g-import-not-at-top
  if which not in (*PROMPT_SETS, "all"):
    raise ValueError(f"which must be one of {(*PROMPT_SETS, 'all')}, got {which!r}")
  sets = PROMPT_SETS if which == "all" else (which,)
  eval_dir = os.path.join(workdir, "eval")
  name = _results_name(generator_name)
  layouts = {prompt_set: os.path.join(eval_dir, name, prompt_set) for prompt_set in sets}
  for prompt_set, layout in layouts.items():  # Every process (the generator is a collective).
    geneval_layout.generate_layout(generate_fn, load_prompts(prompt_set), layout,
                                   images_per_prompt=images_per_prompt, batch_size=batch_size,
                                   seed=seed, desc=f"ShapeGenEval {prompt_set}")

  def score_and_write():  # Process 0 scores and writes; every process gets its result.
    summaries = {}
    for prompt_set, layout in layouts.items():
      summaries[prompt_set] = score_layout(layout, settings)
      summaries[prompt_set]["layout"] = os.path.relpath(layout, workdir)
    result = dict(summaries[sets[0]], prompt_set=sets[0], images_per_prompt=images_per_prompt,
                  seed=seed, generator=generator_name)
    for other in sets[1:]:
      result[other] = summaries[other]
      result["markdown"] += "\n\n" + markdown_table(summaries[other], f"ShapeGenEval {other}")
    fileio.write_json_atomic(os.path.join(eval_dir, name + ".json"), result)
    return result

  from mdd.utils import sharding  # pylint: disable=g-import-not-at-top  (JAX: only to generate)
  return sharding.on_main_process(score_and_write)


def _results_name(generator_name: str) -> str:
  """Where a generator's layout and JSON go under DIR/eval/: the model's (or an unnamed
  generator's) as `shapes_geneval`, reference generators' and scored layouts' beside it."""
  if generator_name in ("", "model"):
    return "shapes_geneval"
  return f"shapes_geneval_{generator_name}"


def run_from_config(generate_fn: GenerateFn, workdir: str, cfg) -> dict:
  """`run` with the fields of the `shapes_geneval` section of `mdd.defaults.eval_config`."""
  return run(generate_fn, workdir, images_per_prompt=int(cfg.images_per_prompt),
             which=cfg.which, batch_size=int(cfg.batch_size), seed=int(cfg.seed),
             settings=settings_from_config(cfg))


def evaluate(generator, section, workdir: str) -> dict:
  """The `shapes_geneval` entry of `mdd.eval.registry`: the trained model's samples scored."""
  result = run_from_config(generator.generate_fn(int(section.batch_size)), workdir, section)
  tags = " ".join(f"{k}={v:.3f}" for k, v in sorted(result["tags"].items()))
  from mdd.utils import sharding  # pylint: disable=g-import-not-at-top
  if sharding.is_main_process():
    print(f"ShapeGenEval overall={result['overall']:.3f} ({result['num_images']} images) {tags}",
          flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> None:
  """The CLI: generate and score the prompt set, or score an existing GenEval layout."""
  parser = argparse.ArgumentParser(
      prog="python -m mdd.eval.shapes_geneval",
      description="ShapeGenEval: generate the prompt set and score it offline, or score a "
                  "GenEval layout.")
  parser.add_argument("--workdir", required=True, help="results go to WORKDIR/eval/")
  parser.add_argument("--layout", default=None,
                      help="score this existing GenEval layout instead of generating")
  parser.add_argument("--generator", default="model",
                      choices=("model", "groundtruth", "reconstruction"))
  parser.add_argument("--which", default="main", choices=(*PROMPT_SETS, "all"))
  parser.add_argument("--images_per_prompt", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--resolution", type=int, default=32, help="groundtruth renders only")
  args = parser.parse_args(argv)
  if args.layout:
    try:
      result = score_layout(args.layout)
    except ValueError as e:
      sys.exit(f"error: {e}")
    result["layout"] = fileio.absolute(args.layout)
    fileio.write_json_atomic(os.path.join(args.workdir, "eval", _results_name("layout") + ".json"),
                             result)
  else:
    prompts = [entry for name in PROMPT_SETS for entry in load_prompts(name)]
    try:
      generate_fn = load_generator(args.generator, args.workdir, prompts, args.resolution)
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f"error: {e}")
    result = run(generate_fn, args.workdir, args.images_per_prompt, args.which,
                 args.batch_size, args.seed, generator_name=args.generator)
  print(result["markdown"])

