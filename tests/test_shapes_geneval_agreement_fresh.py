"""The fresh ShapeGenEval agreement fixture: its integrity, and that the CLI scores it whole.

The fixture (tests/fixtures/shapes_geneval_agreement_fresh.{npz,jsonl}, see AGREEMENT.md) holds 150
images of run `cpu_default_grain`, labelled blind. The measured agreement lives in
docs/runs/shapes_geneval_agreement_v4_2026-12-05_fresh.json; the test only asks for a floor far
below it, so that it breaks when scoring breaks, not when the scorer improves.
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

NUM_IMAGES = 150
PER_TAG = 25


def test_fresh_fixture_integrity():
  images, records = agreement.load_fixture(agreement.FRESH_FIXTURE)
  assert images.shape == (NUM_IMAGES, 32, 32, 3) and images.dtype == np.uint8
  assert [r["index"] for r in records] == list(range(NUM_IMAGES))
  for tag in palette.TAGS:
    of_tag = [r for r in records if r["tag"] == tag]
    assert len(of_tag) == PER_TAG, tag
    assert all(r["metadata"]["tag"] == tag for r in of_tag)
  for r in records:
    assert r["label"] in agreement.LABELS and isinstance(r["unclear"], bool)
    assert r["prompt"] == r["metadata"]["prompt"] and r["note"]
    assert r["run"] == "cpu_default_grain"
    assert re.fullmatch(r"\d{5}/samples/\d{4}\.png", r["source"]), r["source"]
  # One image per prompt folder, and no image shared with the first fixture's run.
  folders = [r["source"].split("/")[0] for r in records]
  assert len(set(folders)) == NUM_IMAGES
  first_images, first_records = agreement.load_fixture(agreement.DEFAULT_FIXTURE)
  assert "cpu_default_grain" not in {r["run"] for r in first_records}
  first_hashes = {zlib.crc32(image.tobytes()) for image in first_images}
  assert not first_hashes & {zlib.crc32(image.tobytes()) for image in images}
  # Images are generated samples, not blanks: each differs from the grey background somewhere.
  assert all(np.abs(image.astype(int) - 128).max() > 60 for image in images)


def test_fresh_fixture_has_no_dev_half(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--agreement", "--agreement_fixture=fresh", "--split=test"])
  assert "--split=all" in capsys.readouterr().err


def test_cli_scores_the_fresh_fixture(tmp_path, capsys):
  out = tmp_path / "fresh.json"
  cli.main(["--agreement", "--agreement_fixture=fresh", "--split=all", "--list_disagreements",
            f"--out={out}"])
  printed = capsys.readouterr().out
  assert f"{NUM_IMAGES} images" in printed
  with open(out) as f:
    result = json.load(f)
  assert result["fixture"] == os.path.join("tests", "fixtures", "shapes_geneval_agreement_fresh")
  assert result["split"] == "all" and result["num_images"] == NUM_IMAGES
  overall = result["groups"]["overall"]["all"]
  assert overall["n"] == NUM_IMAGES
  for tag in palette.TAGS:
    assert result["groups"][tag]["all"]["n"] == PER_TAG
  # A sanity floor far below the measured agreement (see the module docstring).
  assert overall["agreement"] >= 0.6
  assert len(result["disagreements"]) == overall["fp"] + overall["fn"]
