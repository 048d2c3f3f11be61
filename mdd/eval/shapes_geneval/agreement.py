"""ShapeGenEval against a person: the scorer's decisions compared with labels given by eye.

The fixture (`tests/fixtures/shapes_geneval_agreement.{npz,jsonl}`, made by
`tests/fixtures/make_shapes_geneval_agreement.py`, labelled by the rules of `AGREEMENT.md`) holds
generated images, each with its prompt's GenEval metadata and a person's label: "correct" or
"incorrect", plus an `unclear` flag. `evaluate_agreement` scores every image with `score_image`
and the same `ScorerSettings` as `runner.score_layout`, then reports, overall and per tag:

  agreement  fraction of images where the scorer's decision equals the label (with its 95% Wilson
             interval: 54 images per tag leave about +-10 points of sampling error)
  precision  of the images the scorer accepts, the fraction labelled correct
  recall     of the images labelled correct, the fraction the scorer accepts

Each group gets two rows: all images, and only those not flagged unclear.

The fixture is split once into a `dev` half (for designing and tuning the scorer) and a `test`
half (for measuring it, once per final design) by `split_of`: within each (tag, label) group, the
images sorted by crc32 of "run/source" alternate dev, test, dev, ... So each half holds every tag
with both labels, and an image's half depends only on its own path and label, never on a score.

A second fixture, `tests/fixtures/shapes_geneval_agreement_fresh.{npz,jsonl}`, selected with
`--agreement_fixture=fresh`, holds images of another training run, labelled blind after the scorer
was designed. It has no dev half: it is scored whole (`--split=all`). A third,
`tests/fixtures/shapes_geneval_agreement_long.{npz,jsonl}` (`--agreement_fixture=long`), holds
images of a better-trained run, labelled blind in the same way, and is scored whole too.
Three more, `tests/fixtures/shapes_geneval_agreement_gpu{,2,3}.{npz,jsonl}`
(`--agreement_fixture=gpu|gpu2|gpu3`), hold 64 px images of four GPU-trained models, no prompt
in more than one of them, each labelled blind by another person; `gpu4` holds 64 px images of
two later GPU models under several sampler settings, labelled blind after v6 was designed. A
fixture whose records carry a second person's labels (`second_label`, `second_unclear`) also
gets the two people's agreement and the scorer's agreement on the images both labelled alike.

  python -m mdd.eval.shapes_geneval --agreement [--split=dev|test|all]
      [--agreement_fixture=default|fresh|long|gpu|gpu2|gpu3|gpu4|PATH] [--out=FILE.json]
      [--list_disagreements]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import zlib
from typing import Sequence

import numpy as np

from mdd.data import palette
from mdd.eval.shapes_geneval.detector import SCORER_VERSION, ScorerSettings
from mdd.eval.shapes_geneval.rules import score_image
from mdd.utils import fileio

# The fixture lives in the repository's tests/fixtures, not in the package. The path has no
# extension: `.npz` holds the images and `.jsonl` the labels.
_REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_FIXTURE = os.path.join(_REPO, "tests", "fixtures", "shapes_geneval_agreement")
# Names `--agreement_fixture` accepts besides a path: `default` and the labelled sets after it.
FIXTURES = {"default": DEFAULT_FIXTURE} | {
    name: f"{DEFAULT_FIXTURE}_{name}" for name in ("fresh", "long", "gpu", "gpu2", "gpu3",
                                                 "gpu4", "gpu5", "gpu6", "gpu7", "gpu8", "gpu9", "gpu10")}
FRESH_FIXTURE = FIXTURES["fresh"]
# Only the first fixture served design in halves; the others are scored whole (--split=all).
UNSPLIT_FIXTURES = tuple(path for name, path in FIXTURES.items() if name != "default")
LABELS = ("correct", "incorrect")
SPLITS = ("dev", "test", "all")


def _fixture_prefix(path: str) -> str:
  """The fixture's path without `.npz` / `.jsonl`, so either file or the stem may be given."""
  for ext in (".npz", ".jsonl"):
    if path.endswith(ext):
      return path[:-len(ext)]
  return path


def load_fixture(path: str = DEFAULT_FIXTURE) -> tuple[np.ndarray, list[dict]]:
  """Returns (uint8 images [N, H, W, 3], records), where records[i] labels images[i].

  Each record has `metadata` (GenEval's dict, as the scorer reads it), `tag`, `label`
  ("correct" | "incorrect"), `unclear` (bool), `note`, `run` and `source`.
  """
  prefix = _fixture_prefix(path)
  with np.load(prefix + ".npz") as data:
    images = data["images"]
  with open(prefix + ".jsonl") as f:
    records = [json.loads(line) for line in f if line.strip()]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{prefix}.npz: images must be uint8 [N, H, W, 3], got {images.dtype} "
                     f"{images.shape}")
  if len(images) != len(records):
    raise ValueError(f"{prefix}: {len(images)} images but {len(records)} labels")
  for i, record in enumerate(records):
    if record.get("label") not in LABELS:
      raise ValueError(f"{prefix}.jsonl line {i + 1}: label must be one of {LABELS}, got "
                       f"{record.get('label')!r}")
    if not isinstance(record.get("metadata"), dict) or "include" not in record["metadata"]:
      raise ValueError(f"{prefix}.jsonl line {i + 1}: no GenEval metadata")
  return images, records


def _split_key(record: dict) -> int:
  return zlib.crc32(f"{record.get('run', '')}/{record.get('source', '')}".encode())


def split_of(records: Sequence[dict]) -> list[str]:
  """The half ("dev" or "test") of each record: within each (tag, label) group, ordered by crc32
  of "run/source", ranks 0, 2, 4, ... are dev and 1, 3, 5, ... test."""
  groups: dict[tuple[str, str], list[int]] = {}
  for i, record in enumerate(records):
    groups.setdefault((record["tag"], record["label"]), []).append(i)
  halves = [""] * len(records)
  for members in groups.values():
    for rank, i in enumerate(sorted(members, key=lambda j: (_split_key(records[j]), j))):
      halves[i] = "dev" if rank % 2 == 0 else "test"
  return halves


def select_split(images: np.ndarray, records: Sequence[dict], split: str
                 ) -> tuple[np.ndarray, list[dict]]:
  """The images and records of one half ("dev", "test") or of the whole fixture ("all")."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if split == "all":
    return images, list(records)
  keep = [i for i, half in enumerate(split_of(records)) if half == split]
  return images[keep], [records[i] for i in keep]


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval of a proportion (95% by default); (nan, nan) when total is 0."""
  if total == 0:
    return math.nan, math.nan
  p = successes / total
  denom = 1 + z * z / total
  centre = (p + z * z / (2 * total)) / denom
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def agreement_metrics(decisions: Sequence[bool], labels: Sequence[bool]) -> dict:
  """Agreement, precision and recall of scorer `decisions` against person `labels` (True = correct).

  Precision is None when the scorer accepts nothing, and recall is None when nothing is
  labelled correct: the ratio has no images behind it.
  """
  decisions, labels = np.asarray(decisions, bool), np.asarray(labels, bool)
  if decisions.shape != labels.shape:
    raise ValueError(f"{decisions.shape[0]} decisions but {labels.shape[0]} labels")
  n = int(decisions.size)
  tp = int(np.sum(decisions & labels))
  fp = int(np.sum(decisions & ~labels))
  fn = int(np.sum(~decisions & labels))
  tn = n - tp - fp - fn
  agree = tp + tn
  return {
      "n": n, "labelled_correct": tp + fn, "scorer_accepts": tp + fp,
      "tp": tp, "fp": fp, "fn": fn, "tn": tn,
      "agreement": agree / n if n else None,
      "agreement_ci95": list(wilson_interval(agree, n)) if n else None,
      "precision": tp / (tp + fp) if tp + fp else None,
      "recall": tp / (tp + fn) if tp + fn else None,
  }


def _score_set(images: np.ndarray, records: Sequence[dict], settings: ScorerSettings
               ) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
  """The scorer's result for each image, its decisions, the (first) labels and the tags."""
  scored = [score_image(image, record["metadata"], settings)
            for image, record in zip(images, records)]
  return (scored, np.array([s["correct"] for s in scored], bool),
          np.array([r["label"] == "correct" for r in records], bool),
          np.array([r["tag"] for r in records]))


def evaluate_agreement(images: np.ndarray, records: Sequence[dict],
                       settings: ScorerSettings = ScorerSettings(), fixture: str = "",
                       split: str = "all") -> dict:
  """Scores each image and compares with its label, overall and per tag.

  `split` only names, in the result, which part of the fixture `images` and `records` are.
  Returns {"scorer_version", "scorer", "fixture", "split", "num_images", "groups": {"overall" | tag:
  {"all": metrics, "clear": metrics}}, "disagreements": [...], "markdown"}.
  """
  scored, decisions, labels, tags = _score_set(images, records, settings)
  unclear = np.array([bool(r.get("unclear", False)) for r in records], bool)
  groups = {}
  for group, in_group in _group_masks(tags).items():
    groups[group] = {
        "all": agreement_metrics(decisions[in_group], labels[in_group]),
        "clear": agreement_metrics(decisions[in_group & ~unclear], labels[in_group & ~unclear]),
    }
  disagreements = [
      {"index": r.get("index", i), "tag": r["tag"], "prompt": r["metadata"]["prompt"],
       "label": r["label"], "scorer": "correct" if decisions[i] else "incorrect",
       "unclear": bool(unclear[i]), "note": r.get("note", ""), "reason": scored[i]["reason"],
       "source": r.get("source", "")}
      for i, r in enumerate(records) if decisions[i] != labels[i]]
  result = {"scorer_version": SCORER_VERSION, "scorer": dataclasses.asdict(settings),
            "fixture": fixture, "split": split, "num_images": len(records), "groups": groups,
            "disagreements": disagreements}
  if records and all(r.get("second_label") in LABELS for r in records):
    result["second_labeller"] = _second_labeller(decisions, labels, records, tags)
  result["markdown"] = markdown_table(result)
  return result


def _group_masks(tags: np.ndarray) -> dict[str, np.ndarray]:
  """{"overall": all images, tag: that tag's images} for the tags present, in palette order."""
  masks = {"overall": np.ones(len(tags), bool)}
  masks.update({tag: tags == tag for tag in palette.TAGS if tag in set(tags)})
  return masks


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
  """Cohen's kappa of two binary raters: (observed - chance agreement) / (1 - chance)."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.size == 0:
    return None
  observed = float(np.mean(a == b))
  chance = float(np.mean(a) * np.mean(b) + np.mean(~a) * np.mean(~b))
  return None if chance == 1.0 else (observed - chance) / (1.0 - chance)


def _second_labeller(decisions: np.ndarray, labels: np.ndarray, records: Sequence[dict],
                     tags: np.ndarray) -> dict:
  """With a second person's labels (`second_label`, `second_unclear` per record): how often the
  two people agree (and Cohen's kappa), the scorer against the second person, and the scorer on
  the consensus images (both people gave the same label), overall and per tag."""
  second = np.array([r["second_label"] == "correct" for r in records], bool)
  unclear2 = np.array([bool(r.get("second_unclear", False)) for r in records], bool)
  consensus = labels == second
  out = {"labellers": {"n": int(labels.size), "agree": int(np.sum(consensus)),
                       "agreement": float(np.mean(consensus)),
                       "kappa": cohen_kappa(labels, second),
                       "second_unclear": int(np.sum(unclear2))},
         "scorer_vs_second": agreement_metrics(decisions, second),
         "consensus": {}}
  for group, in_group in _group_masks(tags).items():
    both = in_group & consensus
    out["consensus"][group] = agreement_metrics(decisions[both], labels[both])
  return out


def _pct(value: float | None) -> str:
  return "–" if value is None else f"{100 * value:.1f}"


_TABLE_HEAD = ("| group | images | n | labelled correct | scorer accepts | agreement % (95% CI) "
               "| precision % | recall % |",
               "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def markdown_table(result: dict) -> str:
  """One row per group and subset: counts, agreement (with its 95% interval), precision, recall."""
  split = result.get("split", "all")
  lines = [f"ShapeGenEval agreement with labels by eye (scorer {result['scorer_version']}, "
           f"{'' if split == 'all' else split + ' half, '}{result['num_images']} images)", "",
           *_TABLE_HEAD]
  for group, subsets in result["groups"].items():
    for subset, m in subsets.items():
      name = f"**{group}**" if group == "overall" else group
      lines.append(_row(name, "all" if subset == "all" else "not unclear", m))
  second = result.get("second_labeller")
  if second:
    people = second["labellers"]
    lines += ["", f"Two people: same label on {people['agree']} of {people['n']} images "
                  f"({_pct(people['agreement'])}%, Cohen's kappa {people['kappa']:.2f}). The "
                  "scorer against the second person, and on the consensus images (both gave "
                  "the same label):", "",
              *_TABLE_HEAD,
              _row("**overall**", "vs the second person", second["scorer_vs_second"])]
    for group, m in second["consensus"].items():
      lines.append(_row(f"**{group}**" if group == "overall" else group, "consensus", m))
  return "\n".join(lines)


def _row(name: str, subset: str, m: dict) -> str:
  ci = m["agreement_ci95"]
  agreement = ("–" if m["agreement"] is None else
               f"{_pct(m['agreement'])} ({_pct(ci[0])}–{_pct(ci[1])})")
  return (f"| {name} | {subset} | {m['n']} | {m['labelled_correct']} | {m['scorer_accepts']} "
          f"| {agreement} | {_pct(m['precision'])} | {_pct(m['recall'])} |")


def pooled_agreement(names: Sequence[str], settings: ScorerSettings = ScorerSettings()) -> dict:
  """The scorer on several whole agreement sets (`FIXTURES` names): each set's agreement with its
  first labels and with its labellers' consensus, and all images pooled, overall and per tag,
  against the first labels (`first`), the consensus (`consensus`: images two labellers labelled
  alike, and every image of a set with one labeller) and the second labels where a set has them
  (`second`).

  Returns {"scorer_version", "sets", "per_set": {name: {"images", "first", "consensus"}},
  "pooled": {"first" | "consensus" | "second": {"overall" | tag: metrics}}, "markdown"}.
  """
  unknown = [name for name in names if name not in FIXTURES]
  if unknown or not names:
    raise ValueError(f"--pooled: unknown agreement sets {unknown or names}; choose from "
                     f"{', '.join(FIXTURES)}")
  per_set, columns = {}, []
  for name in names:
    images, records = load_fixture(FIXTURES[name])
    _, decision, first, tags = _score_set(images, records, settings)
    has_second = np.array([r.get("second_label") in LABELS for r in records], bool)
    second = np.array([r.get("second_label") == "correct" for r in records], bool)
    alike = ~has_second | (first == second)
    per_set[name] = {"images": len(records), "first": agreement_metrics(decision, first),
                     "consensus": agreement_metrics(decision[alike], first[alike])}
    columns.append((decision, first, second, has_second, alike, tags))
  decision, first, second, has_second, alike, tags = map(np.concatenate, zip(*columns))
  subsets = {"first": (first, np.ones(len(first), bool)), "consensus": (first, alike),
             "second": (second, has_second)}
  pooled = {mode: {group: agreement_metrics(decision[in_group & keep], labels[in_group & keep])
                   for group, in_group in _group_masks(tags).items()}
            for mode, (labels, keep) in subsets.items()}
  result = {"scorer_version": SCORER_VERSION, "sets": list(names), "per_set": per_set,
            "pooled": pooled}
  result["markdown"] = _pooled_markdown(result)
  return result


def _pooled_markdown(result: dict) -> str:
  lines = [f"ShapeGenEval agreement, sets pooled (scorer {result['scorer_version']})", "",
           "| set | images | vs first labels % | consensus images | vs consensus % |",
           "| --- | ---: | ---: | ---: | ---: |"]
  for name, row in result["per_set"].items():
    lines.append(f"| {name} | {row['images']} | {_pct(row['first']['agreement'])} | "
                 f"{row['consensus']['n']} | {_pct(row['consensus']['agreement'])} |")
  lines += ["", *_TABLE_HEAD]
  for mode, groups in result["pooled"].items():
    lines += [_row(f"**{group}**" if group == "overall" else group, mode, m)
              for group, m in groups.items() if m["n"]]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  """`python -m mdd.eval.shapes_geneval --agreement`: prints the table, optionally writes JSON."""
  parser = argparse.ArgumentParser(
      prog="python -m mdd.eval.shapes_geneval --agreement",
      description="ShapeGenEval's agreement with labels given by eye (mdd/eval/shapes_geneval/"
                  "AGREEMENT.md).")
  parser.add_argument("--agreement_fixture", default=DEFAULT_FIXTURE,
                      help=f"one of {', '.join(FIXTURES)} (tests/fixtures/shapes_geneval_"
                           "agreement[_NAME]; all but default are scored with --split=all) or a "
                           "fixture path without extension (PATH.npz + PATH.jsonl); default: "
                           "the repository's tests/fixtures/shapes_geneval_agreement")
  parser.add_argument("--split", default="all", choices=SPLITS,
                      help="dev: the half to design and tune on; test: the held-out half; "
                           "all: both (see split_of)")
  parser.add_argument("--out", default=None, help="also write the result as JSON here")
  parser.add_argument("--list_disagreements", action="store_true",
                      help="print each image where the scorer and the label differ")
  parser.add_argument("--pooled", default=None,
                      help="comma-separated set names (or 'all'): each set whole, then all "
                           "their images pooled, against first labels, consensus and second "
                           "labels")
  args = parser.parse_args(argv)
  if args.pooled:
    names = list(FIXTURES) if args.pooled == "all" else [
        name.strip() for name in args.pooled.split(",") if name.strip()]
    try:
      result = pooled_agreement(names)
    except ValueError as e:
      parser.error(str(e))
    print(result["markdown"])
    if args.out:
      fileio.write_json_atomic(args.out, result)
    return result
  path = FIXTURES.get(args.agreement_fixture, args.agreement_fixture)
  prefix = os.path.abspath(_fixture_prefix(path))
  if prefix in UNSPLIT_FIXTURES and args.split != "all":
    parser.error(f"{prefix} has no dev/test halves (it was labelled after the scorer was "
                 "designed); use --split=all")
  images, records = select_split(*load_fixture(path), args.split)
  # Recorded relative to the repository when it lies inside it, so results do not name a machine.
  fixture = os.path.relpath(prefix, _REPO) if prefix.startswith(_REPO + os.sep) else prefix
  result = evaluate_agreement(images, records, fixture=fixture, split=args.split)
  print(result["markdown"])
  if args.list_disagreements:
    print(f"\n{len(result['disagreements'])} disagreements (index tag label/scorer unclear: "
          "prompt | note | scorer's reason):")
    for d in result["disagreements"]:
      reason = d["reason"].replace("\n", "; ")
      print(f"{d['index']:4d} {d['tag']:13s} {d['label']}/{d['scorer']} "
            f"{'u' if d['unclear'] else '-'}: {d['prompt']} | {d['note']} | {reason}")
  if args.out:
    fileio.write_json_atomic(args.out, result)
  return result
