"""One study from several `ablate.json` files: seeds trained in separate device runs.

  python -m mdd.experiments.ablate --merge=A/ablate.json --merge=B/ablate.json \
      [--until_step=2000] --out=docs/results/merged.json

The parts must be the same study (config and overrides), scored with one ShapeGenEval version,
with disjoint seeds; their runs and
evaluations are joined, and each part's hardware and tokenizer are kept under `parts` (each
part retrains the tokenizer in its base, so a seed's runs share a tokenizer with each other,
not necessarily with the other parts'). `until_step` cuts every loss run at that step, as if
the study had stopped there, so seeds that trained to different lengths compare at a step
they all reached; the parts' own files keep the later steps.
"""

from __future__ import annotations

from typing import Any, Sequence


def cut_run(run: dict, step: int) -> dict:
  """`run` as if stopped after `step`: its evaluations up to it, its last score up to it as
  its score, and no end-of-training evaluation unless training ended by then."""
  final = run.get("final")
  ended_by_then = bool(final) and final.get("step", step + 1) <= step
  if not ended_by_then and not any(row["step"] == step and "eval/masked_acc" in row
                                   for row in run.get("curve", [])):
    raise ValueError(f"run {run.get('variant')}_s{run.get('seed')} has no held-out evaluation "
                     f"at step {step} (it was not trained to it, or not evaluated there)")
  curve = [row for row in run.get("curve", []) if row["step"] <= step]
  scored = [p for p in run.get("geneval_curve", []) if p["step"] <= step]
  # How far the run was evaluated: what the part's own JSON can speak for beyond the cut.
  trained_to = max([row["step"] for row in run.get("curve", []) if "eval/masked_acc" in row]
                   + [(final or {}).get("step", step)])
  out = dict(run, curve=curve, geneval_curve=scored, final=final if ended_by_then else None,
             cut_at=step, trained_to=trained_to)
  if not ended_by_then:
    out["shapes_geneval"] = ({k: v for k, v in scored[-1].items() if k != "step"}
                             if scored else None)
  return out


def scorer_versions(results: dict) -> set[str]:
  """The ShapeGenEval versions a study's runs and evaluations were scored with."""
  found = {p.get("scorer_version") for run in results.get("runs", {}).values()
           for p in [run.get("shapes_geneval") or {}, *run.get("geneval_curve", [])]}
  found |= {(row.get("summary") or {}).get("scorer_version")
            for row in results.get("evals", {}).values()}
  return found - {None}


def merge_ablations(parts: Sequence[tuple[str, dict]], until_step: int | None = None) -> dict:
  """Joins (source, results) pairs of one study into one results dict (see the module doc)."""
  if len(parts) < 2:
    raise ValueError(f"--merge needs at least two ablate.json files, got {len(parts)}")
  for source, results in parts:
    if not results:
      raise ValueError(f"empty or missing ablate.json: {source!r}")
  first_source, first = parts[0]
  merged: dict[str, Any] = {"config": first.get("config"), "overrides": first.get("overrides"),
                            "seeds": [], "runs": {}, "evals": {}, "parts": []}
  for source, results in parts:
    for key in ("config", "overrides"):
      if results.get(key) != merged[key]:
        raise ValueError(f"{source}: {key} {results.get(key)!r} differs from {first_source}'s "
                         f"{merged[key]!r}; only parts of one study can be merged")
    shared = set(results.get("seeds", [])) & set(merged["seeds"])
    if shared:
      raise ValueError(f"{source}: seeds {sorted(shared)} are already in an earlier part; "
                       "merged parts need disjoint seeds")
    for field in ("runs", "evals"):
      clash = set(results.get(field, {})) & set(merged[field])
      if clash:
        raise ValueError(f"{source}: {field} {sorted(clash)[:3]} are already in an earlier part")
      merged[field].update(results.get(field, {}))
    merged["seeds"] += list(results.get("seeds", []))
    merged["parts"].append({"source": source, "seeds": list(results.get("seeds", [])),
                            "hardware": results.get("hardware"),
                            "tokenizer": results.get("tokenizer")})
  versions = {source: scorer_versions(results) for source, results in parts}
  if len(set().union(*versions.values())) > 1 or (any(versions.values()) and
                                                  not all(versions.values())):
    raise ValueError("the parts were scored with different ShapeGenEval versions (" + ", ".join(
        f"{source}: {'/'.join(sorted(v)) or 'none'}" for source, v in versions.items()) +
        "); re-score them with one version first")
  merged["seeds"] = sorted(merged["seeds"])
  hardware = list(dict.fromkeys(p["hardware"] for p in merged["parts"] if p["hardware"]))
  merged["hardware"] = "; ".join(hardware) if hardware else None
  if until_step is not None:
    if merged["evals"]:
      raise ValueError("--until_step cuts loss runs only; these parts hold sampler or held-out "
                       "evaluations of the final models")
    merged["runs"] = {name: cut_run(run, until_step) for name, run in merged["runs"].items()}
    merged["until_step"] = until_step
  return merged
