"""ShapeGenEval v8: solidity judged with thin protrusions opened away.

Both labellers of several GPU sets accept a square or a triangle with a small tail, foot or ear
that v7's solidity floors reject (AGREEMENT.md). v8 lets a silhouette below its shape's floor
pass when an opening by a disc of `protrusion_radius` equal-area radii leaves it nearly convex
(`min_opened_solidity`); notches, bites and concave sides are not opened away.
`min_opened_solidity=math.inf` is v7.
"""

import dataclasses
import math

import numpy as np
import pytest

from mdd.data import palette
from mdd.eval import shapes_geneval as sg
from mdd.eval.shapes_geneval import agreement
from mdd.eval.shapes_geneval.detector import detect_objects
from test_shapes_geneval_v5 import _coverage, _paint  # pylint: disable=import-error

_V7 = dataclasses.replace(sg.ScorerSettings(), min_opened_solidity=math.inf)
_NEW = sg.ScorerSettings()


def _square_with_tail(width):
  """A square of side 0.36 with a thin tail (`width`, image fraction) leaving its lower right
  corner diagonally, about 4 px beyond it at 64 px."""
  square = _coverage(64, polygon=[(0.3, 0.3), (0.66, 0.3), (0.66, 0.66), (0.3, 0.66)])
  d = width / 2 / math.sqrt(2)
  tail = _coverage(64, polygon=[(0.63 - d, 0.63 + d), (0.63 + d, 0.63 - d),
                                (0.7 + d, 0.7 - d), (0.7 - d, 0.7 + d)])
  return np.maximum(square, tail)


def _squares(image, settings):
  return [d for d in detect_objects(image, settings) if d.shape == "square"]


def test_results_name_v8():
  images, records = agreement.load_fixture(agreement.FIXTURES["gpu4"])
  assert sg.SCORER_VERSION == "v8"
  assert agreement.evaluate_agreement(images[:2], records[:2])["scorer_version"] == "v8"


def test_a_square_with_a_thin_tail_is_a_square_where_v7_rejected_it():
  image = _paint(_square_with_tail(0.03), palette.COLORS["red"])
  (v7,) = _squares(image, _V7)
  (new,) = _squares(image, _NEW)
  assert not v7.solid and v7.solidity < _V7.min_solidity_square, v7
  assert new.solid, new


@pytest.mark.parametrize("name,index", [("gpu7", 5), ("gpu8", 25), ("gpu7", 112)])
def test_labelled_shapes_with_a_tail_are_accepted(name, index):
  """Both labellers: "yellow square with a (tiny) tail", "pink square (tiny tail)", "purple
  triangle with a small foot"; v7 rejects them by solidity."""
  images, records = agreement.load_fixture(agreement.FIXTURES[name])
  record = records[index]
  assert record["label"] == record["second_label"] == "correct", record
  assert not sg.score_image(images[index], record["metadata"], _V7)["correct"]
  assert sg.score_image(images[index], record["metadata"], _NEW)["correct"], record["note"]


def test_a_notched_square_is_still_no_square():
  """A V notch cut a third into the top side is not opened away."""
  notched = _coverage(64, polygon=[(0.3, 0.3), (0.42, 0.3), (0.48, 0.42), (0.54, 0.3),
                                   (0.66, 0.3), (0.66, 0.66), (0.3, 0.66)])
  image = _paint(notched, palette.COLORS["orange"])
  assert not any(d.solid and d.shape == "square" for d in detect_objects(image, _NEW))
