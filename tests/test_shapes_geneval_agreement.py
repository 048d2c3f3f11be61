"""ShapeGenEval's agreement with labels by eye: the fixture, the metrics, the CLI."""

import json
import os

import numpy as np
import pytest

from mdd.data import palette
from mdd.data import shapes
from mdd.eval.shapes_geneval import __main__ as cli
from mdd.eval.shapes_geneval import agreement


def test_fixture_has_both_labels_for_every_tag():
  images, records = agreement.load_fixture()
  assert len(images) >= 300
  assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
  for tag in palette.TAGS:
    labels = {r["label"] for r in records if r["tag"] == tag}
    assert labels == {"correct", "incorrect"}, tag
    assert all(r["metadata"]["tag"] == tag for r in records if r["tag"] == tag)
  assert all(isinstance(r["unclear"], bool) and r["run"] and r["source"] for r in records)
  size = sum(os.path.getsize(agreement.DEFAULT_FIXTURE + ext) for ext in (".npz", ".jsonl"))
  assert size < 1 << 20


def test_load_fixture_rejects_mismatched_files(tmp_path):
  images, records = agreement.load_fixture()
  prefix = str(tmp_path / "fixture")
  np.savez_compressed(prefix + ".npz", images=images[:3])
  with open(prefix + ".jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records[:2])
  with pytest.raises(ValueError, match="3 images but 2 labels"):
    agreement.load_fixture(prefix + ".jsonl")


def test_agreement_metrics_on_a_hand_made_case():
  #            tp    fp     fn     tn     tp
  decisions = [True, True, False, False, True]
  labels = [True, False, True, False, True]
  m = agreement.agreement_metrics(decisions, labels)
  assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
  assert m["agreement"] == pytest.approx(3 / 5)
  assert m["precision"] == pytest.approx(2 / 3)
  assert m["recall"] == pytest.approx(2 / 3)
  # Wilson 95% interval of 3/5.
  assert m["agreement_ci95"] == pytest.approx([0.2307, 0.8824], abs=1e-4)
  none_accepted = agreement.agreement_metrics([False, False], [True, False])
  assert none_accepted["precision"] is None and none_accepted["recall"] == 0.0
  assert agreement.agreement_metrics([True], [False])["recall"] is None


_SINGLE = {"tag": "single_object", "prompt": "a photo of a circle",
           "include": [{"class": "circle", "count": 1}]}
_COLORS = {"tag": "colors", "prompt": "a photo of a red square",
           "include": [{"class": "square", "count": 1, "color": "red"}]}
_BLUE_SQUARE = dict(_COLORS, include=[{"class": "square", "count": 1, "color": "blue"}])


def _renders(*metadata) -> np.ndarray:
  """Clean 32 px ShapeGen renders of the scenes `metadata` describe."""
  rng = np.random.default_rng(0)
  return np.stack([shapes.render(shapes.scene_from_metadata(m, rng), 32) for m in metadata])


def test_evaluate_agreement_groups_and_unclear_rows():
  """Clean renders: the scorer accepts the matching prompt and rejects a swapped colour."""
  single, colors = _SINGLE, _COLORS
  images = _renders(single, colors, _BLUE_SQUARE)
  # The last image (a blue square) is scored against "a red square".
  records = [{"metadata": single, "tag": "single_object", "label": "correct", "unclear": False},
             {"metadata": colors, "tag": "colors", "label": "correct", "unclear": False},
             {"metadata": colors, "tag": "colors", "label": "correct", "unclear": True}]
  result = agreement.evaluate_agreement(images, records)
  assert list(result["groups"]) == ["overall", "single_object", "colors"]
  overall = result["groups"]["overall"]
  assert overall["all"]["agreement"] == pytest.approx(2 / 3)
  assert overall["clear"]["n"] == 2 and overall["clear"]["agreement"] == 1.0
  assert result["groups"]["colors"]["all"]["recall"] == pytest.approx(1 / 2)
  assert [d["index"] for d in result["disagreements"]] == [2]
  assert result["scorer_version"] == agreement.SCORER_VERSION


def test_cohen_kappa_on_a_hand_made_case():
  # Observed 3/4; chance 0.5 * 0.25 + 0.5 * 0.75 = 0.5; kappa (0.75 - 0.5) / 0.5.
  assert agreement.cohen_kappa([True, True, False, False],
                               [True, False, False, False]) == pytest.approx(0.5)
  assert agreement.cohen_kappa([True, False], [True, False]) == pytest.approx(1.0)
  assert agreement.cohen_kappa([True, True], [True, True]) is None  # no chance to disagree


def test_a_second_labeller_gives_rater_agreement_and_consensus_rows():
  """Clean renders scored by both people; the second person disagrees on one image, which
  leaves the consensus rows."""
  single, colors = _SINGLE, _COLORS
  images = _renders(single, colors, _BLUE_SQUARE, single)
  # Image 2 (a blue square) is scored against "a red square": the scorer rejects it.
  labels = [("correct", "correct"), ("correct", "correct"), ("correct", "incorrect"),
            ("incorrect", "incorrect")]
  records = [{"metadata": m, "tag": m["tag"], "label": a, "unclear": False,
              "second_label": b, "second_unclear": a != b}
             for m, (a, b) in zip((single, colors, colors, single), labels)]
  result = agreement.evaluate_agreement(images, records)
  second = result["second_labeller"]
  assert second["labellers"]["agree"] == 3 and second["labellers"]["second_unclear"] == 1
  assert second["labellers"]["kappa"] == pytest.approx(
      agreement.cohen_kappa([True, True, True, False], [True, True, False, False]))
  # Against the second person the scorer agrees everywhere but image 3 (a circle it accepts).
  assert second["scorer_vs_second"]["agreement"] == pytest.approx(3 / 4)
  consensus = second["consensus"]
  assert consensus["overall"]["n"] == 3 and consensus["colors"]["n"] == 1
  assert consensus["colors"]["agreement"] == 1.0
  assert "Two people: same label on 3 of 4 images" in result["markdown"]
  assert "| colors | consensus | 1 |" in result["markdown"]
  # Without second labels on every image there are no such rows.
  del records[0]["second_label"]
  assert "second_labeller" not in agreement.evaluate_agreement(images, records)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
  out = tmp_path / "agreement.json"
  cli.main(["--agreement", f"--agreement_fixture={agreement.DEFAULT_FIXTURE}", f"--out={out}"])
  printed = capsys.readouterr().out
  assert "| group | images | n |" in printed
  for tag in palette.TAGS:
    assert f"| {tag} | all |" in printed and f"| {tag} | not unclear |" in printed
  with open(out) as f:
    result = json.load(f)
  _, records = agreement.load_fixture()
  assert result["num_images"] == len(records)
  assert result["scorer_version"] == agreement.SCORER_VERSION
  assert result["groups"]["overall"]["all"]["n"] == len(records)
