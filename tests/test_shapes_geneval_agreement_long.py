"""The long ShapeGenEval agreement fixture: its integrity, and that the CLI scores it whole.

The fixture (tests/fixtures/shapes_geneval_agreement_long.{npz,jsonl}, see AGREEMENT.md) holds 180
images of run `cpu_long`, a better-trained model than the other two fixtures' runs, labelled blind.
The measured agreement lives in docs/runs/shapes_geneval_agreement_*_long.json; the test only asks
for a floor far below it, so that it breaks when scoring breaks, not when the scorer changes.
"""

import json
import os
import re
import zlib

import numpy as np
import pytest

from mdd.data import palette
from mdd.eval.shapes_geneval import __main__ as cli
from mdd.eval.shapes_geneval import agreement

NUM_IMAGES = 180
PER_TAG = 30


def _hashes(images: np.ndarray) -> set[int]:
  return {zlib.crc32(image.tobytes()) for image in images}


def test_long_fixture_integrity():
  images, records = agreement.load_fixture(agreement.FIXTURES["long"])
  assert images.shape == (NUM_IMAGES, 32, 32, 3) and images.dtype == np.uint8
  assert [r["index"] for r in records] == list(range(NUM_IMAGES))
  for tag in palette.TAGS:
    of_tag = [r for r in records if r["tag"] == tag]
    assert len(of_tag) == PER_TAG, tag
    assert all(r["metadata"]["tag"] == tag for r in of_tag)
    # Unlike the fresh set, each tag holds images labelled both ways.
    assert {r["label"] for r in of_tag} == set(agreement.LABELS), tag
  for r in records:
    assert r["label"] in agreement.LABELS and isinstance(r["unclear"], bool)
    assert r["prompt"] == r["metadata"]["prompt"] and r["note"]
    assert r["run"] == "cpu_long"
    assert re.fullmatch(r"\d{5}/samples/\d{4}\.png", r["source"]), r["source"]
  # One image per prompt folder, all distinct, and none shared with the other two fixtures.
  assert len({r["source"].split("/")[0] for r in records}) == NUM_IMAGES
  assert len(_hashes(images)) == NUM_IMAGES
  for name in ("default", "fresh"):
    other_images, other_records = agreement.load_fixture(agreement.FIXTURES[name])
    assert "cpu_long" not in {r["run"] for r in other_records}, name
    assert not _hashes(other_images) & _hashes(images), name
  # Images are generated samples, not blanks: each differs from the grey background somewhere.
  assert all(np.abs(image.astype(int) - 128).max() > 60 for image in images)


def test_long_fixture_has_no_dev_half(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--agreement", "--agreement_fixture=long", "--split=dev"])
  assert "--split=all" in capsys.readouterr().err


def test_cli_scores_the_long_fixture(tmp_path, capsys):
  out = tmp_path / "long.json"
  cli.main(["--agreement", "--agreement_fixture=long", "--split=all", "--list_disagreements",
            f"--out={out}"])
  printed = capsys.readouterr().out
  assert f"{NUM_IMAGES} images" in printed
  with open(out) as f:
    result = json.load(f)
  assert result["fixture"] == os.path.join("tests", "fixtures", "shapes_geneval_agreement_long")
  assert result["split"] == "all" and result["num_images"] == NUM_IMAGES
  overall = result["groups"]["overall"]["all"]
  assert overall["n"] == NUM_IMAGES
  for tag in palette.TAGS:
    assert result["groups"][tag]["all"]["n"] == PER_TAG
  # A sanity floor far below the measured agreement (see the module docstring).
  assert overall["agreement"] >= 0.6
  assert len(result["disagreements"]) == overall["fp"] + overall["fn"]
