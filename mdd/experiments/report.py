"""Markdown tables and PNG plots from an `ablate.json` (`python -m mdd.experiments.ablate --report`).

Everything in the report is computed from the JSON: means and sample standard deviations over
seeds, per-tag ShapeGenEval, curves of held-out masked / group accuracy, edits per step. A
hand-written interpretation can be kept in a notes file and is inserted after the title.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  values = [float(v) for v in values]
  if not values:
    return math.nan, math.nan
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt(values: Sequence[float], digits: int = 3) -> str:
  if not values:
    return "-"
  mean, std = mean_std(values)
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _loss_rows(results: dict) -> dict[str, list[dict]]:
  by_variant: dict[str, list[dict]] = {}
  for run in results.get("runs", {}).values():
    if run.get("status") == 0 and run.get("final"):
      by_variant.setdefault(run["variant"], []).append(run)
  return by_variant


def _evals(results: dict, study: str) -> dict[str, list[dict]]:
  out: dict[str, list[dict]] = {}
  for row in results.get("evals", {}).values():
    if row["study"] == study and row.get("summary"):
      out.setdefault(row["variant"], []).append(row)
  return out


def loss_table(results: dict) -> str:
  rows = _loss_rows(results)
  if not rows:
    return "_No loss-study runs._"
  lines = ["| loss | seeds | masked acc | group acc | eval loss | ShapeGenEval | " +
           " | ".join(TAGS) + " |", "|" + " --- |" * (6 + len(TAGS))]
  for variant, runs in rows.items():
    geneval = [r["shapes_geneval"] for r in runs if r["shapes_geneval"].get("overall") is not None]
    tags = [fmt([g["tags"][t] for g in geneval if t in g["tags"]], 2) for t in TAGS]
    lines.append(
        f"| {variant} | {len(runs)} | {fmt([r['final']['masked_acc'] for r in runs])} | "
        f"{fmt([r['final']['group_acc'] for r in runs])} | "
        f"{fmt([r['final']['loss'] for r in runs])} | "
        f"{fmt([g['overall'] for g in geneval])} | " + " | ".join(tags) + " |")
  return "\n".join(lines)


def steps_to_reach(curve: list[dict], key: str, level: float) -> int | None:
  for row in curve:
    if key in row and row[key] >= level:
      return int(row["step"])
  return None


def speed_table(results: dict, key: str = "eval/masked_acc") -> str:
  """Steps each loss needs to cover 50 / 80 / 95% of the way from the first evaluated value of
  `key` (lowest over runs) to the best final value (highest over runs)."""
  rows = _loss_rows(results)
  values = [row[key] for runs in rows.values() for r in runs for row in r["curve"] if key in row]
  if not values:
    return ""
  firsts = [next(row[key] for row in r["curve"] if key in row)
            for runs in rows.values() for r in runs if any(key in row for row in r["curve"])]
  low, high = min(firsts), max(values)
  levels = [round(low + f * (high - low), 3) for f in (0.5, 0.8, 0.95)]
  name = key.split("/")[1]
  lines = [f"| loss | " + " | ".join(f"steps to {name} ≥ {lv}" for lv in levels) + " |",
           "|" + " --- |" * (1 + len(levels))]
  for variant, runs in rows.items():
    cells = []
    for lv in levels:
      steps = [steps_to_reach(r["curve"], key, lv) for r in runs]
      reached = [s for s in steps if s is not None]
      cells.append(f"{fmt(reached, 0)} ({len(reached)}/{len(steps)} seeds)" if reached else
                   f"not reached (0/{len(steps)})")
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


STEP_METHODS = ("no_edit", "edit_t0.9", "edit_t0.5", "remdm")


def _split_by_steps(evals: dict[str, list[dict]]):
  """({method: {steps: rows}} for the `method@steps` sweep, {variant: rows} for the rest)."""
  methods: dict[str, dict[int, list[dict]]] = {}
  extra = {}
  for variant, rows in evals.items():
    name, _, steps = variant.partition("@")
    if steps and name in STEP_METHODS:
      methods.setdefault(name, {})[int(steps)] = rows
    else:
      extra[variant] = rows
  return methods, extra


def sampler_table(results: dict, study: str = "sampler") -> str:
  evals = _evals(results, study)
  if not evals:
    return f"_No {study} results._"
  methods, extra = _split_by_steps(evals)
  all_steps = sorted({s for m in methods.values() for s in m})
  lines = ["| sampler | " + " | ".join(f"{s} steps" for s in all_steps) +
           " | edits / image (16 steps) |", "|" + " --- |" * (2 + len(all_steps))]
  for name, per_steps in methods.items():
    cells = [fmt([r["summary"]["overall"] for r in per_steps.get(s, [])]) for s in all_steps]
    at16 = per_steps.get(16, [])
    edits = [sum(r["summary"].get("edits_per_step", [])) for r in at16]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(edits, 1)} |")
  if extra:
    lines += ["", "| variant (16 steps) | ShapeGenEval | edits / image |", "| --- | --- | --- |"]
    for variant, rows in extra.items():
      edits = [sum(r["summary"].get("edits_per_step", [])) for r in rows]
      lines.append(f"| {variant} | {fmt([r['summary']['overall'] for r in rows])} | "
                   f"{fmt(edits, 1)} |")
  return "\n".join(lines)


def simple_table(results: dict, study: str) -> str:
  evals = _evals(results, study)
  if not evals:
    return f"_No {study} results._"
  lines = ["| setting | which | ShapeGenEval | " + " | ".join(TAGS) + " |",
           "|" + " --- |" * (3 + len(TAGS))]
  for variant, rows in evals.items():
    tags = [fmt([r["summary"]["tags"][t] for r in rows if t in r["summary"]["tags"]], 2)
            for t in TAGS]
    lines.append(f"| {variant} | {rows[0]['which']} | "
                 f"{fmt([r['summary']['overall'] for r in rows])} | " + " | ".join(tags) + " |")
  return "\n".join(lines)


def plot_loss_curves(results: dict, path: str) -> bool:
  rows = _loss_rows(results)
  if not rows:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key in zip(axes, ("loss", "eval/masked_acc", "eval/group_acc")):
    for variant, runs in rows.items():
      steps = sorted({row["step"] for r in runs for row in r["curve"] if key in row})
      means, stds = [], []
      for step in steps:
        values = [row[key] for r in runs for row in r["curve"] if row["step"] == step and key in row]
        m, s = mean_std(values)
        means.append(m)
        stds.append(s)
      line, = ax.plot(steps, means, label=variant)
      ax.fill_between(steps, [m - s for m, s in zip(means, stds)],
                      [m + s for m, s in zip(means, stds)], alpha=0.2, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_title(key.replace("eval/", "held-out ") + (" (train)" if key == "loss" else ""))
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def plot_sampler(results: dict, path: str) -> bool:
  evals = _evals(results, "sampler")
  if not evals:
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  methods, _ = _split_by_steps(evals)
  for name, per_steps in methods.items():
    steps = sorted(per_steps)
    stats = [mean_std([r["summary"]["overall"] for r in per_steps[s]]) for s in steps]
    ax.errorbar(steps, [m for m, _ in stats], yerr=[s for _, s in stats], label=name,
                marker="o", capsize=3)
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted({s for m in methods.values() for s in m}))
  ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel("sampling steps")
  ax.set_ylabel("ShapeGenEval overall")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def write_report(results: dict, out: str, notes: str = "") -> str:
  """Writes `out` (markdown) and its PNGs next to it; returns the markdown."""
  if not results:
    raise SystemExit("report: empty or missing ablate.json")
  stem = os.path.splitext(out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  parts = ["# Ablations: GCE and token editing on ShapeGen", ""]
  if notes:
    parts += [notes.strip(), ""]
  parts += ["## Setting", "",
            f"- config: `{results.get('config')}`, overrides: `{results.get('overrides')}`",
            f"- seeds (independently trained denoisers): {results.get('seeds')}",
            f"- hardware: {results.get('hardware', 'not recorded')}",
            f"- tokenizer (held-out): {_tokenizer_line(results.get('tokenizer'))}",
            "- values are mean ± sample std over seeds; ShapeGenEval uses the same prompt seeds "
            "for every model.", ""]
  parts += ["## 1. Loss: CE vs GCE at equal steps", "", loss_table(results), ""]
  speed = speed_table(results)
  if speed:
    parts += ["Training speed (held-out masked accuracy, evaluated every `--eval_every` steps; "
              "levels are 50 / 80 / 95% of the way from the first evaluation to the best final "
              "value):", "", speed, ""]
  curves = stem + "_loss_curves.png"
  if plot_loss_curves(results, curves):
    parts += [f"![loss curves]({os.path.basename(curves)})", ""]
  parts += ["## 2. Sampler: editing vs none vs ReMDM", "", sampler_table(results), ""]
  sampler_png = stem + "_sampler.png"
  if plot_sampler(results, sampler_png):
    parts += [f"![sampler]({os.path.basename(sampler_png)})", ""]
  parts += ["## 3. Unmask policies and guidance (16 steps)", "",
            simple_table(results, "policy"), ""]
  parts += ["## 4. Held-out compositional split", "",
            f"Best setting of sections 2–3: `{results.get('heldout_setting', '-')}`.", "",
            simple_table(results, "heldout"), ""]
  text = "\n".join(parts)
  with open(out, "w", encoding="utf-8") as f:
    f.write(text)
  return text


def _tokenizer_line(tok: Any) -> str:
  if not tok:
    return "-"
  return (f"PSNR {tok.get('psnr', math.nan):.2f} dB, codebook usage "
          f"{tok.get('codebook_usage', math.nan):.1%}, perplexity {tok.get('perplexity', 0):.0f}")
