"""ShapeGenEval's detector: the objects of a ShapeGen picture, found by geometry, not weights.

Each pixel is explained as a mix `background + a (colour - background)` of the background and one
palette colour (anti-aliasing, blur and resizing make exactly such mixes; the colour is picked in
RGB, the coverage `a` fitted mostly on luma, which JPEG keeps sharp); pixels with `a >= 0.5` are
foreground. Foreground connected components (scipy.ndimage, 8-connected) of at least 3/4 of the
smallest object ShapeGen draws are candidate objects; their colour is the coverage-weighted vote
of their pixels' colours. The shape is the best of three templates (axis-aligned square, circle,
upright isosceles triangle, sized from the coverage-weighted area, centred on the coverage
centroid, each also tried Gaussian-blurred) by soft IoU with the object's silhouette (the
foreground coverage of its pixels, whatever their colour, so a two-tone or spotted triangle is
still judged a triangle). That IoU is the detection confidence, and the fitted template gives the
bounding box. The thresholds keep every object of clean, blurred and JPEG'd renders and reject
noise (`ScorerSettings`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from mdd.data import palette
from mdd.data import shapes


# 3/4 of the area of the smallest object ShapeGen draws (a triangle of side MIN_OBJECT_SIZE, area
# s^2 / 2) as a fraction of the shorter image side squared: smaller components are specks.
# Smallest objects measured: renders 1.06x that triangle, JPEG'd 0.95x, reconstructions 0.97x.
_MIN_AREA_FRACTION = 0.75 * 0.5 * shapes.MIN_OBJECT_SIZE ** 2


@dataclasses.dataclass(frozen=True)
class ScorerSettings:
  """Detector thresholds, calibrated on reference images and on noise.

  Kept (tests): every object of ShapeGen renders, also blurred (sigma 1 px) or JPEG-compressed
  (quality 75); a 512-code tokenizer's reconstructions score as before (0.891 -> 0.895 at 32 px).
  Rejected: noise. The first thresholds (0.008 of the image, IoU 0.5 / 0.6 on the majority
  colour's coverage) found a prompted shape in most noise images: the images of a denoiser
  trained for 20 steps scored 0.383 overall (single object 0.94), a mosaic of random palette
  patches 0.433; now 0.079 and 0.008. The price: a generated object with blemishes (a notch, a
  spot, a ragged edge) can fall below the IoU thresholds where a person would still name it
  (docs/decisions.md, "ShapeGenEval v2").

  Attributes:
    coverage_threshold: a pixel is foreground when its palette coverage is at least this.
    min_area_fraction: components with less coverage-weighted area (fraction of the shorter
      image side squared) are specks and ignored; default 3/4 of the smallest ShapeGen object.
    min_confidence: template IoU needed to detect an object (GenEval: detector score 0.3).
    counting_min_confidence: the stricter threshold for the counting tag (GenEval: 0.9).
    position_margin: GenEval's position threshold (fraction of the summed box sides).
  """
  coverage_threshold: float = 0.5
  min_area_fraction: float = _MIN_AREA_FRACTION
  min_confidence: float = 0.7
  counting_min_confidence: float = 0.75
  position_margin: float = 0.1


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected object. Box in pixels: centre (cx, cy) and side lengths (w, h)."""
  shape: str
  color: str
  confidence: float
  cx: float
  cy: float
  w: float
  h: float
  area: float

  def as_dict(self) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in dataclasses.asdict(self).items()}


_BACKGROUND = np.array(palette.BACKGROUND, np.float32)
_DIRECTIONS = np.array([palette.COLORS[c] for c in palette.COLOR_NAMES], np.float32) - _BACKGROUND
_TEMPLATE_AREA = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
_SUPERSAMPLE = 4
# RGB -> YCbCr (JPEG's matrix) and the weight of chroma against luma when fitting coverage.
_RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                          [0.5, -0.418688, -0.081312]], np.float32)
_CHROMA_WEIGHT = 0.1
_COVERAGE_METRIC = (_RGB_TO_YCBCR.T @ np.diag([1.0, _CHROMA_WEIGHT, _CHROMA_WEIGHT])
                    @ _RGB_TO_YCBCR).astype(np.float32)
_TEMPLATE_BLURS = (0.0, 0.5, 1.0, 1.5)  # Gaussian sigmas in pixels.
_RIM = 2  # Pixels around a component whose partial coverage still belongs to it.


def _unmix(image: np.ndarray):
  """Explains each pixel as background + a * (colour - background) for every palette colour.

  The colour is chosen by the RGB residual of that explanation. The coverage `a` is fitted in
  YCbCr with chroma down-weighted (`_CHROMA_WEIGHT`): JPEG keeps luma at full resolution but
  halves chroma, so luma carries the sharper edges of small shapes.
  Returns (best colour index [H, W], its coverage [H, W]).
  """
  offset = image.astype(np.float32) - _BACKGROUND
  rgb_coverage = np.clip(offset @ _DIRECTIONS.T / np.sum(_DIRECTIONS ** 2, axis=1), 0.0, 1.0)
  residual = np.sqrt(np.sum(
      (offset[..., None, :] - rgb_coverage[..., None] * _DIRECTIONS) ** 2, -1))
  best = np.argmin(residual, axis=-1)
  coverage = np.clip(offset @ _COVERAGE_METRIC @ _DIRECTIONS.T / np.einsum(
      "cd,de,ce->c", _DIRECTIONS, _COVERAGE_METRIC, _DIRECTIONS), 0.0, 1.0)
  return best, np.take_along_axis(coverage, best[..., None], -1)[..., 0]


def _template_coverage(shape: str, cx: float, cy: float, side: float, ys: np.ndarray,
                       xs: np.ndarray) -> np.ndarray:
  """Coverage of pixels (rows ys, cols xs) by a shape, by 4x4 supersampling."""
  sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
  py = (ys[:, None] + sub[None, :]).reshape(-1)[:, None]  # pixel i spans [i, i+1)
  px = (xs[:, None] + sub[None, :]).reshape(-1)[None, :]
  half = side / 2
  if shape == "square":
    inside = (np.abs(px - cx) <= half) & (np.abs(py - cy) <= half)
  elif shape == "circle":
    inside = (px - cx) ** 2 + (py - cy) ** 2 <= half ** 2
  else:  # Upright isosceles triangle: apex at top centre, base the bottom side of the box.
    depth = py - (cy - half)
    inside = (depth >= 0) & (depth <= side) & (np.abs(px - cx) <= depth / 2)
  inside = inside.reshape(len(ys), _SUPERSAMPLE, len(xs), _SUPERSAMPLE)
  return inside.mean(axis=(1, 3))


def _fit_shape(cover: np.ndarray, region: np.ndarray, y0: int, x0: int):
  """Best template for a coverage map `cover` (zero outside `region`), top-left pixel (y0, x0).

  Each template is also tried blurred (`_TEMPLATE_BLURS`): blur and JPEG's chroma subsampling
  round a small square's corners, which a sharp circle template would then fit better.
  Returns (shape, soft IoU, (cx, cy, side)) in image pixel coordinates.
  """
  area = float(cover.sum())
  ys = np.arange(cover.shape[0]) + y0
  xs = np.arange(cover.shape[1]) + x0
  cy = float((cover.sum(1) * (ys + 0.5)).sum() / area)
  cx = float((cover.sum(0) * (xs + 0.5)).sum() / area)
  best = None
  for shape, unit_area in _TEMPLATE_AREA.items():
    side = float(np.sqrt(area / unit_area))
    # The triangle's centroid lies s/6 below its box centre.
    box_cy = cy - side / 6 if shape == "triangle" else cy
    sharp = _template_coverage(shape, cx, box_cy, side, ys, xs)
    for sigma in _TEMPLATE_BLURS:
      template = ndimage.gaussian_filter(sharp, sigma, mode="constant") if sigma else sharp
      template = np.where(region, template, 0.0)
      iou = float(np.minimum(cover, template).sum()
                  / max(np.maximum(cover, template).sum(), 1e-9))
      if best is None or iou > best[1]:
        best = (shape, iou, (cx, box_cy, side))
  return best


def detect_objects(image: np.ndarray, settings: ScorerSettings = ScorerSettings()
                   ) -> list[Detection]:
  """All objects in a uint8 [H, W, 3] image, most confident first."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
  height, width = image.shape[:2]
  best, best_cover = _unmix(image)
  foreground = best_cover >= settings.coverage_threshold
  labels, _ = ndimage.label(foreground, structure=np.ones((3, 3), bool))
  min_area = settings.min_area_fraction * min(height, width) ** 2
  found = []
  for index, window in enumerate(ndimage.find_objects(labels), start=1):
    # A margin of `_RIM` pixels picks up the anti-aliased or blurred edge (coverage < threshold).
    y0, y1 = max(window[0].start - _RIM, 0), min(window[0].stop + _RIM, height)
    x0, x1 = max(window[1].start - _RIM, 0), min(window[1].stop + _RIM, width)
    crop = (slice(y0, y1), slice(x0, x1))
    own = labels[crop] == index
    votes = np.bincount(best[crop][own], weights=best_cover[crop][own],
                        minlength=len(palette.COLOR_NAMES))
    color_index = int(np.argmax(votes))
    rim = (ndimage.binary_dilation(own, np.ones((3, 3), bool), iterations=_RIM)
           & (labels[crop] == 0))
    region = own | rim
    # The silhouette: foreground coverage whatever the colour (colour is the vote above).
    cover = np.where(region, best_cover[crop], 0.0)
    if cover.sum() < min_area:
      continue
    shape, iou, (cx, cy, side) = _fit_shape(cover, region, y0, x0)
    found.append(Detection(shape=shape, color=palette.COLOR_NAMES[color_index], confidence=iou,
                           cx=cx, cy=cy, w=side, h=side, area=float(cover.sum())))
  found.sort(key=lambda d: (-d.confidence, -d.area, d.cy, d.cx))
  return found
