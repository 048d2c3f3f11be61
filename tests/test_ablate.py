"""The ablation runner (mdd.experiments.ablate) and its report, without training anything."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mdd.eval import shapes_geneval
from mdd.experiments import ablate, report


def _run(variant, seed, overall, masked, curve_scale=1.0):
  curve = [{"step": s, "loss": 5.0 - s / 100, "eval/masked_acc": curve_scale * s / 400,
            "eval/group_acc": curve_scale * s / 300} for s in (100, 200, 300)]
  return {"variant": variant, "seed": seed, "status": 0,
          "final": {"masked_acc": masked, "group_acc": masked + 0.2, "loss": 3.0},
          "curve": curve,
          "shapes_geneval": {"overall": overall, "num_images": 504,
                             "tags": {t: overall for t in report.TAGS}}}


def _eval(study, variant, seed, overall, edits=(0, 1, 2)):
  return {"study": study, "variant": variant, "seed": seed, "overrides": {}, "which": "main",
          "status": 0, "summary": {"overall": overall, "tags": {t: overall for t in report.TAGS},
                                   "num_images": 504, "edits_per_step": list(edits)}}


def _results():
  runs = {f"loss/ce_s{s}": _run("ce", s, o, 0.3, 0.5) for s, o in ((0, 0.2), (1, 0.4))}
  runs.update({f"loss/gce_soft_s{s}": _run("gce_soft", s, o, 0.5)
               for s, o in ((0, 0.5), (1, 0.7))})
  evals = {}
  for s in (0, 1):
    for steps in (4, 16):
      evals[f"sampler/no_edit@{steps}/s{s}"] = _eval("sampler", f"no_edit@{steps}", s, 0.1 * s)
      evals[f"sampler/edit_t0.5@{steps}/s{s}"] = _eval("sampler", f"edit_t0.5@{steps}", s, 0.5)
    evals[f"policy/policy_entropy/s{s}"] = _eval("policy", "policy_entropy", s, 0.3)
  return {"config": "configs/shapes_tiny.py:vocab=14", "overrides": {}, "seeds": [0, 1],
          "runs": runs, "evals": evals, "tokenizer": {"psnr": 27.5, "codebook_usage": 0.9}}


def test_report_tables_and_plots(tmp_path):
  out = str(tmp_path / "results.md")
  text = report.write_report([("runs/ablate_h200_v16.json", _results())], out)
  # Header, the headline table (every number cites files that exist), then the ablation tables.
  assert text.index("## Current results") < text.index("```") < text.index("### Setting")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for row in report.CURRENT_RESULTS:
    assert f"| {row.what} |" in text and row.evidence
    for path in row.evidence:
      assert os.path.isfile(os.path.join(repo, path)), path
  # Mean ± sample std over the two seeds.
  assert ("| ce | 2 | - | 0.300 ± 0.000 | 0.500 ± 0.000 | 3.000 ± 0.000 | 0.300 ± 0.141 |"
          in text)
  assert "| gce_soft | 2 |" in text and "0.600 ± 0.141" in text
  # Sampler table: one row per method, columns per step count, edits per image at 16 steps.
  assert "| no_edit | 0.050 ± 0.071 | 0.050 ± 0.071 | 3.0 ± 0.0 |" in text
  assert "| policy_entropy | main | 0.300 ± 0.000 |" in text
  # ce's group accuracy curve is half of gce's, so it never reaches 80% of the best final.
  assert "not reached (0/2)" in text
  for png in ("results_ablate_h200_v16_loss_curves.png", "results_ablate_h200_v16_sampler.png"):
    assert os.path.getsize(tmp_path / png) > 1000


def test_mean_std_and_steps_to_reach():
  assert report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
  assert report.mean_std([5.0]) == (5.0, 0.0)
  curve = [{"step": 100, "eval/group_acc": 0.2}, {"step": 200, "eval/group_acc": 0.6}]
  assert report.steps_to_reach(curve, "eval/group_acc", 0.5) == 200
  assert report.steps_to_reach(curve, "eval/group_acc", 0.7) is None


def test_variants_cover_the_issue():
  names = ablate.sampler_variants()
  for steps in (4, 8, 16, 32, 64):
    for method in ("no_edit", "edit_t0.9", "edit_t0.5", "remdm"):
      assert f"{method}@{steps}" in names
  assert names["no_edit@8"]["edit_threshold"] >= 1.0
  assert names["remdm@8"]["remask_policy"] == "remdm"
  policies = ablate.policy_variants()
  assert {"policy_confidence", "policy_stratified", "policy_entropy"} <= set(policies)
  assert set(ablate.LOSS_VARIANTS) == {"ce", "gce_soft", "gce_marginal", "gce_soft_ce_mix"}


def test_load_config_applies_typed_overrides():
  config = ablate.load_config("configs/shapes_tiny.py:runlocal", {
      "denoiser_train.num_steps": "7", "sampler.temperature": "0.5", "loss.type": "ce"})
  assert config.denoiser_train.num_steps == 7 and config.sampler.temperature == 0.5
  assert config.loss.type == "ce" and config.data.train_size == 2048
  config = ablate.load_config("configs/shapes_tiny.py", {"sampler.guidance_interval": "(0.25, 1)"})
  assert config.sampler.guidance_interval == (0.25, 1)
  with pytest.raises(SystemExit, match="guidance_interval expects a tuple"):
    ablate.load_config("configs/shapes_tiny.py", {"sampler.guidance_interval": "0.5"})
  with pytest.raises(SystemExit, match="no experiment config named .missing."):
    ablate.load_config("configs/missing.py")


def test_runner_spreads_gpus_and_reports_failures(tmp_path):
  runner = ablate.Runner(parallel=2, gpus=2, logdir=str(tmp_path))
  code = "import os; print('GPU', os.environ['CUDA_VISIBLE_DEVICES'])"
  statuses = runner.run_all([("a", [sys.executable, "-c", code]),
                             ("b", [sys.executable, "-c", code]),
                             ("bad", [sys.executable, "-c", "raise SystemExit(3)"])])
  assert statuses == {"a": 0, "b": 0, "bad": 3}
  # Two slots, two GPUs: the two jobs that run together get different GPUs.
  logs = {open(tmp_path / f"{n}.log").read().strip().splitlines()[-1] for n in ("a", "b")}
  assert logs == {"GPU 0", "GPU 1"}


_TRAINING_LIKE = """
import os, signal, sys, time
def on_term(signum, frame):
  time.sleep(1.0)  # a checkpoint being written
  open(sys.argv[1], "w").write("saved")
  raise SystemExit(143)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1] + ".started", "w").close()
time.sleep(60)
"""

_RUNNER_PARENT = """
import sys
from mdd.experiments import ablate
runner = ablate.Runner(parallel=2, gpus=0, logdir=sys.argv[1])
child = [sys.executable, "-c", sys.argv[2]]
runner.run_all([(n, child + [sys.argv[1] + "/" + n]) for n in ("a", "b", "queued")])
"""


def test_runner_on_sigterm_waits_for_its_commands_to_save_and_starts_no_more(tmp_path):
  """A time limit's SIGTERM to the runner alone: the running commands get it too and finish
  their checkpoint before the runner exits (143); the queued command never starts."""
  parent = subprocess.Popen([sys.executable, "-c", _RUNNER_PARENT, str(tmp_path), _TRAINING_LIKE],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while not all((tmp_path / f"{n}.started").exists() for n in ("a", "b")):
    assert time.time() < deadline and parent.poll() is None, parent.communicate()[0]
    time.sleep(0.1)
  parent.send_signal(signal.SIGTERM)
  out = parent.communicate(timeout=60)[0]
  assert parent.returncode == 143, out
  assert (tmp_path / "a").read_text() == "saved" and (tmp_path / "b").read_text() == "saved", out
  assert not (tmp_path / "queued.started").exists(), out
  assert "stopped by SIGTERM" in out, out


_IGNORES_SIGTERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + ".started", "w").close()
time.sleep(60)
"""

_RUNNER_PARENT_KILL_AFTER = """
import sys
from mdd.experiments import ablate
runner = ablate.Runner(parallel=1, gpus=0, logdir=sys.argv[1])
child = [sys.executable, "-c", sys.argv[2], sys.argv[1] + "/a"]
runner.run_all([("a", child)], kill_after=1.0)
"""


def test_runner_kills_a_resumable_command_that_ignores_sigterm_after_kill_after(tmp_path):
  """An evaluation that does not stop on SIGTERM is killed `kill_after` seconds later, so the
  runner exits (143) long before a time limit's `-k` would kill it and the trainings."""
  parent = subprocess.Popen([sys.executable, "-c", _RUNNER_PARENT_KILL_AFTER, str(tmp_path),
                             _IGNORES_SIGTERM],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while not (tmp_path / "a.started").exists():
    assert time.time() < deadline and parent.poll() is None, parent.communicate()[0]
    time.sleep(0.1)
  start = time.time()
  parent.send_signal(signal.SIGTERM)
  out = parent.communicate(timeout=30)[0]
  assert parent.returncode == 143, out
  assert time.time() - start < 15, out  # the child alone would sleep 60 s
  assert "a: exit -9" in out, out


def test_report_cli_rejects_missing_json(tmp_path):
  with pytest.raises(SystemExit):
    ablate.main(["--report", str(tmp_path / "none.json"), "--out", str(tmp_path / "r.md")])
  path = tmp_path / "ablate.json"
  path.write_text(json.dumps(_results()))
  ablate.main(["--report", str(path), "--out", str(tmp_path / "r.md")])
  text = (tmp_path / "r.md").read_text()
  assert text.startswith("# Results") and f"Raw results: `{path}`." in text


@pytest.mark.slow
def test_ablation_end_to_end_at_toy_size(tmp_path):
  """Tokenizer once, one CE run, two sampler settings and the held-out split (~5 min on CPU)."""
  workdir = tmp_path / "abl"
  ablate.main(["--config=configs/shapes_tiny.py:runlocal", f"--workdir={workdir}",
               "--loss_variants=ce", "--seeds=0", "--eval_every=20", "--geneval_every=40",
               "--only=no_edit@4|remdm@4",
               "--studies=loss,sampler,heldout", "--set", "tokenizer.model.vocab_size=64",
               "--set", "loss.type=ce", "--set", "loss.ce_mix=0.0"])
  results = json.loads((workdir / "ablate.json").read_text())
  run = results["runs"]["loss/ce_s0"]
  assert run["status"] == 0 and run["final"]["step"] == 60
  assert [row["step"] for row in run["curve"] if "eval/masked_acc" in row] == [20, 40, 60]
  # ShapeGenEval of the checkpoint every 40 steps and of the final one.
  assert [p["step"] for p in run["geneval_curve"]] == [40, 60]
  assert {p["scorer_version"] for p in run["geneval_curve"]} == {shapes_geneval.SCORER_VERSION}
  assert run["shapes_geneval"]["overall"] == run["geneval_curve"][-1]["overall"]
  best = results["heldout_setting"]
  assert best in ("no_edit@4", "remdm@4")
  assert set(results["evals"]) == {"sampler/no_edit@4/s0", "sampler/remdm@4/s0"} | {
      f"prompts_{which}/{name}/s0" for which in ablate.PROMPT_SETS
      for name in ("config", "config_no_edit", best)}
  assert {e["which"] for e in results["evals"].values()} == set(ablate.PROMPT_SETS)
  assert all(0.0 <= e["summary"]["overall"] <= 1.0 for e in results["evals"].values())
  text = report.write_report([("", results)], str(tmp_path / "results.md"))
  assert "| ce | 1 |" in text
  assert "| setting | main | heldout | reworded | color_attr_new |" in text


def test_evaluation_retries_at_half_the_batch_when_memory_runs_out():
  tried = []

  def fn(rows):
    tried.append(rows)
    if rows > 16:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 32.02GiB")
    return rows

  assert ablate._run_halving_on_oom(fn, 64) == 16 and tried == [64, 32, 16]
  with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
    ablate._run_halving_on_oom(fn, 64, smallest=64)
  with pytest.raises(ValueError):  # Other errors are not retried.
    ablate._run_halving_on_oom(lambda rows: int("x"), 64)


def test_geneval_curves_steps_to_reach_and_prompt_sets():
  def run(variant, seed, points):
    return {"variant": variant, "seed": seed, "status": 0, "final": {"step": 3000},
            "curve": [], "shapes_geneval": {"overall": points[-1][1], "tags": {}},
            "geneval_curve": [{"step": s, "overall": v, "tags": {}} for s, v in points]}
  results = {"runs": {
      "loss/ce_s0": run("ce", 0, [(1000, 0.2), (2000, 0.4), (3000, 0.6)]),
      "loss/ce_s1": run("ce", 1, [(1000, 0.2), (2000, 0.4), (3000, 0.6)]),
      "loss/gce_s0": run("gce", 0, [(1000, 0.3), (2000, 0.7), (3000, 0.8)]),
      "loss/gce_s1": run("gce", 1, [(1000, 0.3), (2000, 0.5), (3000, 0.8)])},
      "evals": {f"prompts_{w}/config/s{s}": {"study": f"prompts_{w}", "variant": "config",
                                              "seed": s, "which": w,
                                              "summary": {"overall": v + s * 0.1, "tags": {}}}
                for w, v in (("main", 0.5), ("reworded", 0.3)) for s in (0, 1)}}
  table = report.geneval_curve_table(results)
  assert "| ce | 0.200 ± 0.000 | 0.400 ± 0.000 | 0.600 ± 0.000 |" in table
  assert "| gce | 0.300 ± 0.000 | 0.600 ± 0.141 | 0.800 ± 0.000 |" in table
  # GCE's mean curve reaches CE's final 0.6 at step 2000: 0.67 of CE's 3000 steps.
  reach = report.reach_reference_table(results)
  assert "| gce | 2000 | 0.67 | 0.800 ± 0.000 |" in reach and "| ce | 3000 | 1.00 |" in reach
  assert report.steps_to_score([(1000, 0.3, 0), (2000, 0.5, 0)], 0.4) == 1500.0
  assert report.steps_to_score([(1000, 0.3, 0)], 0.4) is None
  sets = report.prompt_sets_table(results)
  assert "| setting | main | reworded |" in sets
  assert "| config | 0.550 ± 0.071 | 0.350 ± 0.071 |" in sets


def test_a_study_stopped_before_its_last_step_reports_its_last_evaluation():
  """A loss study cut short (final None) still gets its tables, at the step it reached, marked
  stopped; a variant with finished runs shows only those."""
  def stopped(variant, seed, acc, score):
    curve = [{"step": 1000, "eval/masked_acc": acc - 0.1, "eval/group_acc": acc - 0.1,
              "eval/loss": 1.5}, {"step": 1800, "loss": 1.1},
             {"step": 2000, "eval/masked_acc": acc, "eval/group_acc": acc + 0.01,
              "eval/loss": 1.0}, {"step": 2200, "loss": 0.9}]
    return {"variant": variant, "seed": seed, "status": 1, "final": None, "curve": curve,
            "shapes_geneval": {"overall": score, "tags": {}},
            "geneval_curve": [{"step": 1000, "overall": score / 2, "tags": {}},
                              {"step": 2000, "overall": score, "tags": {}}]}
  results = {"runs": {"loss/ce_s0": stopped("ce", 0, 0.8, 0.4),
                      "loss/ce_s1": stopped("ce", 1, 0.9, 0.6),
                      "loss/gce_s0": stopped("gce", 0, 0.85, 0.5)}}
  table = report.loss_table(results)
  assert "| ce | 2 | 2000 (not finished) | 0.850 ± 0.071 | 0.860 ± 0.071 | 1.000 ± 0.000 | " \
         "0.500 ± 0.141 |" in table
  assert "| gce | 1 | 2000 (not finished) |" in table
  assert table.index("| ce |") < table.index("| gce |")  # the order of the runs
  # Stopped after a held-out evaluation that no ShapeGenEval followed: both steps shown; a
  # missing group accuracy is "-", not "nan".
  late = stopped("ce", 0, 0.8, 0.4)
  late["curve"].append({"step": 2500, "eval/masked_acc": 0.82, "eval/loss": 0.9})
  row = report.loss_table({"runs": {"loss/ce_s0": late}})
  assert "| ce | 1 | 2500 (ShapeGenEval at 2000) (not finished) | 0.820 ± 0.000 | - |" in row
  assert "| ce | 0.250 ± 0.071 | 0.500 ± 0.141 |" in report.geneval_curve_table(results)
  finished = dict(stopped("gce", 1, 0.7, 0.3), status=0,
                  final={"step": 3000, "masked_acc": 0.7, "group_acc": 0.7, "loss": 1.0})
  results["runs"]["loss/gce_s1"] = finished
  assert "| gce | 1 | 3000 | 0.700 ± 0.000 |" in report.loss_table(results)
  # A variant with only stopped runs keeps its place after one with finished runs.
  reordered = {"runs": {"loss/gce_s1": finished, "loss/ce_s0": stopped("ce", 0, 0.8, 0.4)}}
  table = report.loss_table(reordered)
  assert table.index("| gce |") < table.index("| ce |")
  assert report.loss_table({"runs": {"loss/ce_s0": dict(stopped("ce", 0, 0.8, 0.4),
                                                          curve=[])}}) == "_No loss-study runs._"


def test_report_has_one_section_per_ablation_in_order_and_names_the_scorer(tmp_path):
  loss_only = {"config": "configs/shapes_gpu.py:vocab=16", "seeds": [0],
               "runs": {"loss/ce_s0": {
                   "variant": "ce", "seed": 0, "status": 0,
                   "final": {"step": 20, "masked_acc": 0.5, "group_acc": 0.5, "loss": 1.0},
                   "curve": [{"step": 20, "loss": 1.0}],
                   "shapes_geneval": {"overall": 0.4, "tags": {}, "scorer_version": "v5"},
                   "geneval_curve": [{"step": 20, "overall": 0.4, "tags": {},
                                      "scorer_version": "v5"}]}},
               "evals": {}}
  text = report.write_report([("a/ablate_new.json", loss_only),
                              ("b/ablate_h200_v16.json", _results())],
                             str(tmp_path / "results.md"), current=())
  first, second = text.split("## Ablation: ")[1:]
  assert "Raw results: `a/ablate_new.json`." in first
  assert "- ShapeGenEval scorer: v5" in first
  # A study the JSON does not hold gets no section; the other ablation keeps its own.
  assert "### Sampler" not in first and "### Sampler" in second
  assert second.startswith(report.ABLATION_NOTES["ablate_h200_v16.json"].title)
  assert "- ShapeGenEval scorer: not recorded in the JSON (named in the text above)" in second
  assert os.path.exists(tmp_path / "results_ablate_new_loss_curves.png")
  assert os.path.exists(tmp_path / "results_ablate_h200_v16_sampler.png")
  with pytest.raises(SystemExit, match="missing ablate.json: 'c.json'"):
    report.write_report([("c.json", None)], str(tmp_path / "r.md"))
