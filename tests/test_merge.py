"""Merging one study's seeds trained apart (mdd.experiments.merge and `ablate --merge`)."""

import json

import pytest

from mdd.experiments import ablate, merge, report


def _run(variant, seed, last_step, scores):
  """A loss run evaluated every 1000 steps up to `last_step`, scored `scores[k]` at 1000(k+1);
  finished (with a final evaluation) when it reached 3000, stopped otherwise."""
  steps = range(1000, last_step + 1, 1000)
  curve = [{"step": s, "loss": 3.0 - s / 1000, "eval/masked_acc": 0.8 + s / 1e5 + seed / 100,
            "eval/group_acc": 0.81 + s / 1e5, "eval/loss": 1.0} for s in steps]
  geneval = [{"step": s, "overall": v, "num_images": 504, "scorer_version": "v7",
              "tags": {"colors": v}} for s, v in zip(steps, scores)]
  finished = last_step == 3000
  return {"variant": variant, "seed": seed, "status": 0 if finished else 143, "curve": curve,
          "geneval_curve": geneval,
          "final": ({"step": 3000, "masked_acc": curve[-1]["eval/masked_acc"],
                     "group_acc": 0.84, "loss": 1.0} if finished else None),
          "shapes_geneval": {k: v for k, v in geneval[-1].items() if k != "step"}}


def _study(seeds, last_step, hardware, psnr):
  runs = {}
  for s in seeds:
    runs[f"loss/ce_s{s}"] = _run("ce", s, last_step, [0.1 + s / 10, 0.4 + s / 10, 0.5])
    runs[f"loss/gce_s{s}"] = _run("gce", s, last_step, [0.2 + s / 10, 0.5 + s / 10, 0.6])
  return {"config": "configs/shapes_gpu.py:vocab=18",
          "overrides": {"denoiser_train.num_steps": "3000"}, "seeds": list(seeds), "runs": runs,
          "evals": {}, "hardware": hardware, "tokenizer": {"psnr": psnr, "codebook_usage": 0.04}}


def test_merged_seeds_compare_at_the_step_all_reached():
  stopped = _study([0, 1], 2000, "1 x H100", 39.6)
  longer = _study([2], 3000, "1 x H100", 40.2)
  merged = merge.merge_ablations([("a.json", stopped), ("b.json", longer)], until_step=2000)
  assert merged["seeds"] == [0, 1, 2] and len(merged["runs"]) == 6
  assert merged["hardware"] == "1 x H100" and merged["until_step"] == 2000
  assert [p["tokenizer"]["psnr"] for p in merged["parts"]] == [39.6, 40.2]
  cut = merged["runs"]["loss/gce_s2"]
  assert cut["final"] is None and cut["cut_at"] == 2000
  assert [p["step"] for p in cut["geneval_curve"]] == [1000, 2000]
  assert cut["shapes_geneval"]["overall"] == pytest.approx(0.7)
  assert max(row["step"] for row in cut["curve"]) == 2000
  # The inputs are not modified: the longer part keeps its step-3000 score.
  assert longer["runs"]["loss/gce_s2"]["shapes_geneval"]["overall"] == 0.6
  table = report.loss_table(merged)
  # All three seeds of each loss, at step 2000: GCE's scores 0.5, 0.6, 0.7.
  assert "| gce | 3 | 2000 (not finished; 1 of 3 seeds trained further, cut here) |" in table
  assert "0.600 ± 0.100 |" in table.split("| gce |")[1]
  # Without the cut, the finished seed alone would stand for its loss.
  assert "| gce | 1 | 3000 |" in report.loss_table(
      merge.merge_ablations([("a.json", stopped), ("b.json", longer)]))
  section = "\n".join(report.ablation_section(merged, "merged.json", "/tmp/unused"))
  assert "seeds [0, 1]: PSNR 39.60 dB" in section and "seeds [2]: PSNR 40.20 dB" in section
  assert "compared at step 2000" in section


def test_merge_refuses_parts_of_different_studies_or_shared_seeds():
  a = _study([0, 1], 2000, "h", 39.6)
  with pytest.raises(ValueError, match="seeds \\[0, 1\\] are already in an earlier part"):
    merge.merge_ablations([("a.json", a), ("a2.json", a)])
  other = dict(_study([2], 2000, "h", 39.6), config="configs/shapes_gpu.py:vocab=16")
  with pytest.raises(ValueError, match="config .* differs"):
    merge.merge_ablations([("a.json", a), ("b.json", other)])
  with pytest.raises(ValueError, match="at least two"):
    merge.merge_ablations([("a.json", a)])
  with pytest.raises(ValueError, match="ce_s0 has no held-out evaluation at step 500"):
    merge.merge_ablations([("a.json", a), ("b.json", _study([2], 2000, "h", 1.0))],
                          until_step=500)
  # Beyond where a stopped part got to.
  with pytest.raises(ValueError, match="ce_s0 has no held-out evaluation at step 3000"):
    merge.merge_ablations([("a.json", a), ("b.json", _study([2], 3000, "h", 1.0))],
                          until_step=3000)
  unversioned = _study([2], 2000, "h", 1.0)
  for run in unversioned["runs"].values():
    for point in [run["shapes_geneval"], *run["geneval_curve"]]:
      del point["scorer_version"]
  with pytest.raises(ValueError, match="b.json: none"):
    merge.merge_ablations([("a.json", a), ("b.json", unversioned)])
  rescored = _study([2], 2000, "h", 1.0)
  for run in rescored["runs"].values():
    for point in [run["shapes_geneval"], *run["geneval_curve"]]:
      point["scorer_version"] = "v5"
  with pytest.raises(ValueError, match="different ShapeGenEval versions \\(a.json: v7, "
                                       "b.json: v5\\)"):
    merge.merge_ablations([("a.json", a), ("b.json", rescored)])
  with_evals = dict(_study([2], 2000, "h", 1.0), evals={"sampler/x/s2": {}})
  with pytest.raises(ValueError, match="cuts loss runs only"):
    merge.merge_ablations([("a.json", a), ("b.json", with_evals)], until_step=2000)


def test_merge_cli_writes_json_and_names_bad_input_in_one_line(tmp_path, capsys):
  paths = []
  for name, study in (("a", _study([0, 1], 2000, "h", 39.6)), ("b", _study([2], 3000, "h", 40.0))):
    paths.append(str(tmp_path / f"{name}.json"))
    with open(paths[-1], "w") as f:
      json.dump(study, f)
  out = str(tmp_path / "merged.json")
  ablate.main([f"--merge={paths[0]}", f"--merge={paths[1]}", "--until_step=2000",
               f"--out={out}"])
  with open(out) as f:
    assert json.load(f)["seeds"] == [0, 1, 2]
  broken = tmp_path / "broken.json"
  broken.write_text("{not json")
  for argv, message in (
      ([f"--merge={paths[0]}", f"--merge={tmp_path / 'missing.json'}", f"--out={out}"],
       "ablate --merge: empty or missing ablate.json"),
      ([f"--merge={tmp_path / 'missing.json'}", f"--merge={paths[0]}", f"--out={out}"],
       "ablate --merge: empty or missing ablate.json"),
      ([f"--merge={paths[0]}", f"--merge={broken}", f"--out={out}"],
       f"ablate --merge: cannot read {broken}: Expecting property name"),
      ([f"--merge={paths[0]}", f"--merge={tmp_path}", f"--out={out}"],
       f"ablate --merge: cannot read {tmp_path}:"),
      ([f"--merge={paths[0]}", f"--merge={paths[1]}", "--out=results.md"],
       "ablate --merge: writes JSON"),
      ([f"--merge={paths[0]}", f"--merge={paths[1]}", f"--report={paths[0]}",
        f"--out={out}"], "ablate: --merge and --report are separate steps"),
      ([f"--report={paths[0]}", "--until_step=2000"], "ablate: --until_step only applies")):
    with pytest.raises(SystemExit) as raised:
      ablate.main(argv)
    text = str(raised.value)
    assert text.startswith(message) and "\n" not in text, text
