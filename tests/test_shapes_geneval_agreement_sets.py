"""The blind-labelled ShapeGenEval agreement sets beyond the first (`fresh`, `long`, `gpu`,
`gpu2`, ..., `gpu10`): their integrity, and that the CLI scores each
whole.

Each set (tests/fixtures/shapes_geneval_agreement_<name>.{npz,jsonl}, see AGREEMENT.md) holds
images of models no other set draws from (one CPU-trained model for `fresh` and `long`; four
GPU-trained ones for the three first `gpu` sets, which share no prompt; two later ones under
six sampler settings for `gpu4`; a retrained one under six for `gpu5`; four trained at 2^18
codes for `gpu6` and `gpu7`, which share no prompt; a third seed's two at steps 2000 and 3000
for `gpu8`; four more at 2^16 codes, seeds 2 and 3, at step 2000 for `gpu9` and at step 3000 for
`gpu10`), labelled blind; `long`, `gpu2`, `gpu3` and `gpu5` to `gpu10` also carry a second
person's labels. The measured agreement lives in
docs/runs/shapes_geneval_agreement_*_<name>.json; the tests only ask for a floor far below it,
so that they break when scoring breaks, not when the scorer changes.
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

# The four GPU-config models the GPU sets draw from, each set on prompts the others do not use.
_GPU_RUNS = {f"gpu_{loss}_s{seed}_step2000" for loss in ("ce", "gce") for seed in (0, 1)}
# The two step-3000 models of the token-editing study under six sampler settings.
_GPU4_RUNS = {"gpu_gce_s0_step3000_config", "gpu_gce_s1_step3000_config"} | {
    f"gpu_gce_s0_step3000_{s}" for s in ("edit_16steps", "edit_8steps", "no_edit_32steps",
                                        "remdm_32steps")}
# The token-editing study's seed-1 model, trained again, edits off / on at 8, 32 and 64 steps.
_GPU5_RUNS = {f"h200_s1_{edits}_at{steps}" for edits in ("no_edit", "edit_t0.5")
              for steps in (8, 32, 64)}
# CE and GCE at 2^18 codes, seeds 0 and 1, at step 2000.
_GPU6_RUNS = {f"v18_{loss}_s{seed}_step2000" for loss in ("ce", "gce") for seed in (0, 1)}
# CE and GCE at 2^18 codes, seed 2, at steps 2000 and 3000.
_GPU8_RUNS = {f"v18_{loss}_s2_step{step}" for loss in ("ce", "gce") for step in (2000, 3000)}
# CE and GCE at 2^16 codes, seeds 2 and 3, at step 2000 (gpu9) and 3000 (gpu10).
_GPU9_RUNS = {f"v16_{loss}_s{seed}_step2000" for loss in ("ce", "gce") for seed in (2, 3)}
_GPU10_RUNS = {run.replace("step2000", "step3000") for run in _GPU9_RUNS}
# name -> (runs the images come from, images, images per tag, image side)
SETS = {"fresh": ({"cpu_default_grain"}, 150, 25, 32), "long": ({"cpu_long"}, 180, 30, 32),
        "gpu": (_GPU_RUNS, 180, 30, 64), "gpu2": (_GPU_RUNS, 180, 30, 64),
        "gpu3": (_GPU_RUNS, 144, 24, 64), "gpu4": (_GPU4_RUNS, 144, 24, 64),
        "gpu5": (_GPU5_RUNS, 144, 24, 64), "gpu6": (_GPU6_RUNS, 144, 24, 64),
        "gpu7": (_GPU6_RUNS, 144, 24, 64), "gpu8": (_GPU8_RUNS, 144, 24, 64),
        "gpu9": (_GPU9_RUNS, 144, 24, 64), "gpu10": (_GPU10_RUNS, 144, 24, 64)}
# Sets with more than one empty sample: how many.
_EMPTY_SAMPLES = {"gpu8": 8}
# Sets drawn from the same models, on prompts the others of the group do not use.
_SAME_MODELS = (("gpu", "gpu2", "gpu3"), ("gpu6", "gpu7"), ("gpu8",), ("gpu9", "gpu10"))


def _drawn(image: np.ndarray) -> bool:
  """Not an empty sample: somewhere the image differs clearly from the grey background."""
  return bool(np.abs(image.astype(int) - 128).max() > 60)


def _hashes(images: np.ndarray) -> set[int]:
  """Hashes of the drawn images (a model's empty samples can be byte-identical)."""
  return {zlib.crc32(image.tobytes()) for image in images if _drawn(image)}


@pytest.mark.parametrize("name", sorted(SETS))
def test_fixture_integrity(name):
  runs, num_images, per_tag, side = SETS[name]
  images, records = agreement.load_fixture(agreement.FIXTURES[name])
  assert images.shape == (num_images, side, side, 3) and images.dtype == np.uint8
  assert [r["index"] for r in records] == list(range(num_images))
  for tag in palette.TAGS:
    of_tag = [r for r in records if r["tag"] == tag]
    assert len(of_tag) == per_tag, tag
    assert all(r["metadata"]["tag"] == tag for r in of_tag)
  for r in records:
    assert r["label"] in agreement.LABELS and isinstance(r["unclear"], bool)
    assert r["prompt"] == r["metadata"]["prompt"]
    # The guide asks for a note "when useful": always for a wrong or doubtful image.
    assert r["note"] or (r["label"] == "correct" and not r["unclear"]), r
    assert r["run"] in runs
    assert re.fullmatch(r"\d{5}/samples/\d{4}\.png", r["source"]), r["source"]
  # One image per prompt folder, all distinct, and none shared with another set.
  assert len({r["source"].split("/")[0] for r in records}) == num_images
  drawn = sum(_drawn(image) for image in images)
  assert len(_hashes(images)) == drawn
  for other in set(agreement.FIXTURES) - {name}:
    other_images, other_records = agreement.load_fixture(agreement.FIXTURES[other])
    if any(name in group and other in group for group in _SAME_MODELS):
      # The same models, no prompt in common.
      assert not ({r["source"].split("/")[0] for r in records}
                  & {r["source"].split("/")[0] for r in other_records})
    else:
      assert not runs & {r["run"] for r in other_records}, other
    assert not _hashes(other_images) & _hashes(images), other
  # Images are generated samples, not blanks: all but a rare empty sample (a model can draw
  # nothing; the 2^18 CE model of seed 2 does so for 47 of its 504 step-2000 prompts, hence
  # gpu8's 8). A person labels an empty image incorrect.
  assert drawn >= len(images) - _EMPTY_SAMPLES.get(name, 1)
  for image, r in zip(images, records):
    if not _drawn(image):
      assert r["label"] == "incorrect" and r.get("second_label", "incorrect") == "incorrect", r


_TWO_LABELLERS = ("long", "gpu2", "gpu3", "gpu5", "gpu6", "gpu7", "gpu8", "gpu9",
                  "gpu10")


@pytest.mark.parametrize("name", _TWO_LABELLERS)
def test_two_labeller_sets_hold_both_labels_in_every_tag_and_a_second_person_s(name):
  _, records = agreement.load_fixture(agreement.FIXTURES[name])
  for tag in palette.TAGS:
    assert {r["label"] for r in records if r["tag"] == tag} == set(agreement.LABELS), tag
  for r in records:
    assert r["second_label"] in agreement.LABELS and isinstance(r["second_unclear"], bool)
    assert r["second_note"]
  # Two people, labelling blind to each other: far from chance, not identical.
  agree = sum(r["label"] == r["second_label"] for r in records)
  assert 0.8 * len(records) < agree < len(records)


@pytest.mark.parametrize("name", [name for group in _SAME_MODELS for name in group])
def test_the_gpu_set_prompts_are_one_per_folder_across_its_four_models(name):
  _, records = agreement.load_fixture(agreement.FIXTURES[name])
  assert len({r["run"] for r in records}) == 4
  assert len({r["source"].split("/")[0] for r in records}) == len(records)


@pytest.mark.parametrize("name", sorted(SETS))
def test_unsplit_sets_refuse_a_half(name, capsys):
  with pytest.raises(SystemExit):
    cli.main(["--agreement", f"--agreement_fixture={name}", "--split=test"])
  assert "--split=all" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SETS))
def test_cli_scores_the_whole_set(name, tmp_path, capsys):
  _, num_images, per_tag, _ = SETS[name]
  out = tmp_path / f"{name}.json"
  cli.main(["--agreement", f"--agreement_fixture={name}", "--split=all", "--list_disagreements",
            f"--out={out}"])
  assert f"{num_images} images" in capsys.readouterr().out
  with open(out) as f:
    result = json.load(f)
  assert result["fixture"] == os.path.join("tests", "fixtures", f"shapes_geneval_agreement_{name}")
  assert result["split"] == "all" and result["num_images"] == num_images
  overall = result["groups"]["overall"]["all"]
  assert overall["n"] == num_images
  for tag in palette.TAGS:
    assert result["groups"][tag]["all"]["n"] == per_tag
  assert overall["agreement"] >= 0.6  # a sanity floor far below the measured agreement
  assert len(result["disagreements"]) == overall["fp"] + overall["fn"]
  assert ("second_labeller" in result) == (name in _TWO_LABELLERS)


def test_pooled_agreement_adds_up_the_sets_and_refuses_an_unknown_one(capsys):
  result = agreement.main(["--pooled=fresh,gpu6"])
  assert "| gpu6 | 144 |" in capsys.readouterr().out
  fresh, gpu6 = result["per_set"]["fresh"], result["per_set"]["gpu6"]
  pooled = result["pooled"]
  # Pooled counts are the sets' counts added; the consensus leaves out gpu6's split images and
  # keeps every image of fresh (one labeller); `second` has gpu6's images only.
  for mode in ("first", "consensus"):
    for key in ("n", "tp", "fp", "fn", "tn"):
      assert pooled[mode]["overall"][key] == fresh[mode][key] + gpu6[mode][key], (mode, key)
  assert fresh["consensus"]["n"] == 150 and gpu6["consensus"]["n"] < 144
  assert pooled["second"]["overall"]["n"] == 144
  assert sum(pooled["first"][tag]["n"] for tag in palette.TAGS) == 294
  with pytest.raises(SystemExit):
    cli.main(["--agreement", "--pooled=fresh,nosuchset"])
  assert "nosuchset" in capsys.readouterr().err
