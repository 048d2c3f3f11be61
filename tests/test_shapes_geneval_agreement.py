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


def test_evaluate_agreement_groups_and_unclear_rows():
  """Clean renders: the scorer accepts the matching prompt and rejects a swapped colour."""
  rng = np.random.default_rng(0)
  single = {"tag": "single_object", "prompt": "a photo of a circle",
            "include": [{"class": "circle", "count": 1}]}
  colors = {"tag": "colors", "prompt": "a photo of a red square",
            "include": [{"class": "square", "count": 1, "color": "red"}]}
  blue_square = dict(colors, include=[{"class": "square", "count": 1, "color": "blue"}])
  images = np.stack([shapes.render(shapes.scene_from_metadata(m, rng), 32)
                     for m in (single, colors, blue_square)])
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
