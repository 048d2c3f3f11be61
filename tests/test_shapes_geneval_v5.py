"""ShapeGenEval scorer v5: a shaded shape is one object; rounded, bulging squares are squares.

Where v4 disagreed with labels by eye (AGREEMENT.md), v5 changes four things: a shape shaded
from one colour into a neighbouring one (yellow into orange) is merged into one object, where v4
saw two pieces that were neither a shape nor an object; a square keeps its name down to a
squareness of 0.45 (v4: 0.5) and an outline deviation of 2.4 render units (v4: 2.2), which
large generated squares with rounded corners and bulging sides need; a triangle's outline may
deviate by 1.75 units (v4: 1.6). Tests named after a v4 failure fail on v4 (checked against a
copy of it); the controls inside each, and the last tests, are what v5 must keep.
"""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from mdd.data import palette
from mdd.eval import shapes_geneval as sg
from mdd.eval.shapes_geneval import agreement
# Metadata builders shared with the v4 tests (tests/ is on the path: pytest's rootdir mode).
from test_shapes_geneval_v4 import _accepted, _counting, _single  # pylint: disable=import-error

_SUPERSAMPLE = 4
_BACKGROUND = np.array(palette.BACKGROUND, np.float64)


def _coverage(resolution, polygon=None, pieslice=None):
  """Coverage [H, W] in 0..1 of a polygon (vertices in image fractions) or a pie slice (box,
  start, end), drawn at 4x and box-reduced as ShapeGen renders."""
  unit = resolution * _SUPERSAMPLE
  canvas = Image.new("L", (unit, unit), 0)
  draw = ImageDraw.Draw(canvas)
  if polygon is not None:
    draw.polygon([(x * unit, y * unit) for x, y in polygon], fill=255)
  else:
    box, start, end = pieslice
    draw.pieslice([v * unit for v in box], start, end, fill=255)
  return np.asarray(canvas.reduce(_SUPERSAMPLE), np.float64) / 255


def _paint(coverage, fill, image=None):
  """`fill` ([H, W, 3] or an RGB triple) over `image` (default: background) by `coverage`."""
  if image is None:
    image = np.broadcast_to(_BACKGROUND, coverage.shape + (3,))
  out = image + coverage[..., None] * (np.asarray(fill, np.float64) - image)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _shaded(coverage, first, second, axis=0, share=0.5):
  """A fill shaded from palette colour `first` into `second` along `axis` (0: top to bottom)
  over the covered extent; `share` of the extent is nearer `first` than `second`."""
  size = coverage.shape[0]
  inside = np.nonzero(coverage.sum(axis=1 - axis) > 0)[0]
  position = (np.arange(size) - inside[0]) / max(inside[-1] - inside[0], 1)
  # Piecewise linear: 0 at the start, 0.5 at `share` of the extent, 1 at the end.
  t = np.interp(position, [0.0, share, 1.0], [0.0, 0.5, 1.0])
  t = t[:, None] if axis == 0 else t[None, :]
  colours = [np.array(palette.COLORS[c], np.float64) for c in (first, second)]
  return (1 - t)[..., None] * colours[0] + t[..., None] * colours[1]


def _jpeg(image, quality=50):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=quality)
  return np.asarray(Image.open(buffer).convert("RGB"))


def _blur(image, sigma):
  return np.clip(np.round(ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0))),
                 0, 255).astype(np.uint8)


def _triangle(size, cx=0.5, cy=0.55):
  return [(cx, cy - size * 2 / 3), (cx + size / 2, cy + size / 3), (cx - size / 2, cy + size / 3)]


def _square(size, cx=0.5, cy=0.5):
  h = size / 2
  return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def _disc(size, cx=0.5, cy=0.5, points=96):
  angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
  return [(cx + size / 2 * np.cos(a), cy + size / 2 * np.sin(a)) for a in angles]


def _rounded_square(side, corner, bulge=0.0, aspect=1.0, cx=0.5, cy=0.5):
  """A square (or a rectangle `aspect` times as wide) whose corners are rounded off by `corner`
  of the side and whose sides bulge outwards by `bulge` (image fractions) at their middle."""
  half = np.array([side * aspect / 2, side / 2])
  radius = corner * side
  arcs = []  # clockwise on screen (y down) from the top right corner
  for k, signs in enumerate(((1, -1), (1, 1), (-1, 1), (-1, -1))):
    centre = (half - radius) * signs
    angles = -np.pi / 2 + k * np.pi / 2 + np.linspace(0, np.pi / 2, 12)
    arcs.append(centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1))
  points = []
  for k, arc in enumerate(arcs):
    points += list(arc)
    a, b = arc[-1], arcs[(k + 1) % 4][0]
    normal = np.array([np.cos(k * np.pi / 2), np.sin(k * np.pi / 2)])  # outwards
    for t in np.linspace(0, 1, 24)[1:-1]:
      points.append(a + t * (b - a) + bulge * np.sin(np.pi * t) * normal)
  return [(cx + x, cy + y) for x, y in points]


def test_the_result_names_the_scorer_and_its_settings():
  images, records = agreement.load_fixture(agreement.FRESH_FIXTURE)
  result = agreement.evaluate_agreement(images[:2], records[:2])
  assert result["scorer_version"] == sg.SCORER_VERSION
  assert result["scorer"]["max_deviation_square"] == sg.ScorerSettings().max_deviation_square


# --- Shaded shapes --------------------------------------------------------------------------


_OUTLINES = {"triangle": _triangle, "square": _square, "circle": _disc}


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("first,second", [("yellow", "orange"), ("red", "orange"),
                                          ("purple", "blue")])
def test_a_shaded_shape_is_one_object_of_no_single_colour(resolution, first, second):
  """A shape shaded evenly from one colour into a neighbouring one (as the fresh set's
  yellow-orange triangle, index 90) is one object of its shape. v4 split it into two colour
  components (red into orange also with a gap of background between them, where the hue
  halfway is explained by neither colour) and counted neither or both. When each colour covers
  about half of it, its hue lies between two names and it satisfies no colour request."""
  for shape, outline in _OUTLINES.items():
    for size in (0.35, 0.5):
      for axis in (0, 1):
        coverage = _coverage(resolution, outline(size))
        image = _paint(coverage, _shaded(coverage, first, second, axis))
        # JPEG's chroma subsampling blurs the shading of a small shape beyond recognition.
        for seen in (image, _jpeg(image, 75)) if size >= 0.5 else (image,):
          objects = [d for d in sg.detect_objects(seen) if d.solid]
          assert [d.shape for d in objects] == [shape], (shape, size, axis, objects)
          assert _accepted(seen, _single(shape))
        # A triangle shaded from apex to base has most of its area in the base's colour (and
        # JPEG's chroma subsampling moves the split between the colours: clean images only).
        if shape != "triangle" or axis == 1:
          colour = [d for d in sg.detect_objects(image) if d.solid][0].color
          assert set(colour.split("/")) == {first, second}, (shape, size, axis, colour)
          assert not _accepted(image, _single(shape, first))
          assert not _accepted(image, _single(shape, second))


@pytest.mark.parametrize("resolution", [32, 64])
def test_a_shaded_triangle_counts_once(resolution):
  """A shaded triangle beside a plain one: two triangles (v4 counted only the plain one)."""
  coverage = _coverage(resolution, _triangle(0.4, cx=0.3, cy=0.4))
  shaded = _paint(coverage, _shaded(coverage, "yellow", "orange"))
  plain = _paint(_coverage(resolution, _triangle(0.3, cx=0.72, cy=0.7)),
                 palette.COLORS["green"], shaded)
  assert _accepted(plain, _counting("triangle", 2))
  assert not _accepted(plain, _counting("triangle", 3))
  assert not _accepted(shaded, _counting("triangle", 2))


@pytest.mark.parametrize("resolution", [32, 64])
def test_a_shape_shaded_mostly_in_one_colour_is_that_colour(resolution):
  """A yellow triangle whose apex shades into orange (the top 30% of its height, a tenth of its
  area, nearer orange) is a yellow triangle, not an orange one."""
  coverage = _coverage(resolution, _triangle(0.5))
  image = _paint(coverage, _shaded(coverage, "orange", "yellow", share=0.3))
  assert _accepted(image, _single("triangle", "yellow"))
  assert not _accepted(image, _single("triangle", "orange"))


@pytest.mark.parametrize("resolution", [32, 64])
def test_two_colours_a_person_tells_apart_are_no_shaded_object(resolution):
  """Kept from v4: a square in two halves of colours that are not neighbours (red and blue,
  green and yellow), or shaded from one into the other, is no square and no two squares."""
  for first, second in (("red", "blue"), ("green", "yellow")):
    coverage = _coverage(resolution, _square(0.5))
    for share in (0.5, 0.999):  # shaded; split into halves with a sharp edge
      image = _paint(coverage, _shaded(coverage, first, second, axis=1, share=share))
      assert not _accepted(image, _single("square")), (first, second, share)
      assert not _accepted(image, _counting("square", 2)), (first, second, share)


# --- Squares --------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64])
def test_large_squares_with_rounded_corners_and_bulging_sides_are_squares(resolution):
  """What large generated squares look like (sides of 20-26 px at 32 px): corners rounded off by
  a sixth of the side and sides bulging by a pixel at 32 px, slightly blurred. v4 took four of
  the six bulging by a pixel for no shape (squareness 0.47-0.49 under its 0.5, or an outline
  deviation of 2.27-2.34 over its 2.2); those bulging by half a pixel are the controls."""
  for side in (0.65, 0.72, 0.8):
    for bulge in (0.5 / 32, 1 / 32):
      coverage = _coverage(resolution, _rounded_square(side, 0.15, bulge))
      image = _blur(_paint(coverage, palette.COLORS["red"]), 0.5 * resolution / 32)
      assert _accepted(image, _single("square", "red")), (side, bulge)
      assert not _accepted(image, _single("circle")), (side, bulge)


@pytest.mark.parametrize("resolution", [32, 64])
def test_rounded_rectangles_and_half_discs_are_still_no_squares(resolution):
  """Controls for the wider square bounds: a clear rectangle (1.5:1) with the same rounded
  corners and bulging sides, and half-discs (squareness up to 0.46), are not squares."""
  for side in (0.3, 0.45, 0.55):
    rectangle = _paint(_coverage(resolution, _rounded_square(side, 0.15, 0.5 / 32, aspect=1.5)),
                       palette.COLORS["red"])
    assert not _accepted(rectangle, _single("square")), side
  for size in (0.3, 0.35, 0.45, 0.6):
    box = (0.5 - size / 2, 0.5 - size / 4, 0.5 + size / 2, 0.5 + size * 3 / 4)
    for start in (0, 180):
      half_disc = _paint(_coverage(resolution, pieslice=(box, start, start + 180)),
                         palette.COLORS["green"])
      assert not _accepted(half_disc, _single("square")), (size, start)
      assert not _accepted(half_disc, _single("circle")), (size, start)


# --- The images v5 was changed for ------------------------------------------------------------


def test_the_clearly_labelled_images_v4_missed_in_the_fresh_set():
  """The fresh set's four disagreements on images whose label is not unclear, all rejected by
  v4: a large yellow square with bumpy edges (32: squareness 0.47), a white triangle with a
  speck at its apex (41: outline deviation 1.66), a large orange square with wavy edges (81:
  deviation 2.39) and a yellow-orange triangle (90: two pieces)."""
  images, records = agreement.load_fixture(agreement.FRESH_FIXTURE)
  for index in (32, 41, 81, 90):
    record = records[index]
    assert record["index"] == index and record["label"] == "correct" and not record["unclear"]
    assert _accepted(images[index], record["metadata"]), (index, record["note"])
