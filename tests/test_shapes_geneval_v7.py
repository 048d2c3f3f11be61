"""ShapeGenEval scorer v7: an object that is no clean shape still makes "too many".

v6 gave no credit to an object whose outline is not a clean shape (a square with a notch, a
tail or a wavy side), for including and excluding alike, so "three squares" was accepted with
a fourth, notched square that people count (AGREEMENT.md). v7 counts such an object, when it is
otherwise an object (one colour, not a piece of a blob), as its nearest shape for the exclude
rule only; "at least N" still needs N clean shapes.
"""

import dataclasses

import numpy as np

from mdd.data import palette
from mdd.eval import shapes_geneval as sg
from mdd.eval.shapes_geneval import agreement
from mdd.eval.shapes_geneval import rules
from mdd.eval.shapes_geneval.detector import detect_objects
# Render helpers shared with the v5 tests (tests/ is on the path: pytest's rootdir mode).
from test_shapes_geneval_v5 import _coverage, _paint  # pylint: disable=import-error

_CORNERS = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75)]


def _counting(classname, count):
  words = {2: "two", 3: "three", 4: "four"}
  return {"tag": "counting", "include": [{"class": classname, "count": count}],
          "exclude": [{"class": classname, "count": count + 1}],
          "prompt": f"a photo of {words[count]} {classname}s"}


def _square(cx, cy, half):
  return _coverage(64, polygon=[(cx - half, cy - half), (cx + half, cy - half),
                                (cx + half, cy + half), (cx - half, cy + half)])


def _notched_square(cx, cy, half):
  """A square with a wedge cut into its top side: a square to the eye, not a clean one."""
  notch = _coverage(64, polygon=[(cx - 0.04, cy - half - 0.01), (cx, cy - half + 0.07),
                                 (cx + 0.04, cy - half - 0.01)])
  return np.clip(_square(cx, cy, half) - notch, 0, 1)


def _three_squares_and(fourth):
  image = None
  for (cx, cy), colour in zip(_CORNERS, ["red", "blue", "orange"]):
    image = _paint(_square(cx, cy, 0.09), palette.COLORS[colour], image)
  return _paint(fourth, palette.COLORS["purple"], image)


def test_a_notched_fourth_square_makes_three_squares_too_many():
  image = _three_squares_and(_notched_square(0.72, 0.72, 0.11))
  detections = detect_objects(image)
  notched = [d for d in detections if d.color == "purple"]
  assert len(notched) == 1 and notched[0].shape == "square" and not notched[0].solid, notched
  result = sg.score_image(image, _counting("square", 3))
  assert not result["correct"]
  assert "found 4 (1 not a clean square)" in result["reason"], result["reason"]
  # Including stays strict: the notched square is not one of "four squares".
  assert not sg.score_image(image, _counting("square", 4))["correct"]


def test_a_clean_fourth_square_and_no_fourth_object_as_before():
  clean = _three_squares_and(_square(0.75, 0.75, 0.09))
  assert not sg.score_image(clean, _counting("square", 3))["correct"]
  assert sg.score_image(clean, _counting("square", 4))["correct"]
  alone = _three_squares_and(np.zeros((64, 64)))
  assert sg.score_image(alone, _counting("square", 3))["correct"]


def test_an_unclean_object_of_another_nearest_shape_does_not_count():
  image = _three_squares_and(_notched_square(0.72, 0.72, 0.11))
  (notched,) = [d for d in detect_objects(image) if d.color == "purple"]
  as_circle = dataclasses.replace(notched, shape="circle")
  others = [d for d in detect_objects(image) if d.color != "purple"]
  assert rules.evaluate_detections(others + [as_circle], _counting("square", 3))[0]


def test_a_piece_of_a_blob_or_a_low_confidence_component_does_not_count():
  image = _three_squares_and(_notched_square(0.72, 0.72, 0.11))
  (notched,) = [d for d in detect_objects(image) if d.color == "purple"]
  others = [d for d in detect_objects(image) if d.color != "purple"]
  settings = sg.ScorerSettings()
  for piece in (dataclasses.replace(notched, contact=settings.max_contact + 0.1),
                dataclasses.replace(notched, isolation=settings.min_isolation - 0.1),
                dataclasses.replace(notched, confidence=settings.min_confidence - 0.05)):
    assert rules.evaluate_detections(others + [piece], _counting("square", 3))[0], piece


def test_labelled_gpu_images_with_an_unclean_extra_square_are_rejected():
  """Two images of the fourth GPU set: "three squares" with a fourth (a notch and a wavy
  side) and "four squares" with a fifth (a tail), labelled wrong by eye; v6 accepted both."""
  images, records = agreement.load_fixture(agreement.FIXTURES["gpu4"])
  for index in (53, 143):
    position = next(i for i, r in enumerate(records) if r["index"] == index)
    record = records[position]
    assert record["label"] == "incorrect" and record["tag"] == "counting", record
    result = sg.score_image(images[position], record["metadata"])
    assert not result["correct"] and "not a clean square" in result["reason"], result
