"""ShapeGenEval's detector: the objects of a ShapeGen picture, found by geometry, not weights.

Scorer version `SCORER_VERSION` ("v3"). The steps of `detect_objects`:

1. Denoise. When the image is noisy (a robust estimate of the pixel noise from neighbouring-pixel
   differences exceeds `ScorerSettings.denoise_above`), it is Gaussian-smoothed first; clean and
   compressed images, whose flat areas stay flat, are used as they are.
2. Unmix. Each pixel is explained as a mix `background + a (colour - background)` of the
   background and one palette colour (anti-aliasing, blur and resizing make exactly such mixes;
   the colour is picked in RGB, the coverage `a` fitted mostly on luma, which JPEG keeps sharp).
   Pixels with `a >= coverage_threshold` are foreground; each takes the colour most of its
   foreground 3x3 neighbours have, which removes isolated colour flips at edges and under noise.
3. Segment by colour. Candidate objects are the 8-connected components of each colour's
   foreground, so touching objects of different colours stay apart and a blob of mixed colours
   ("confetti") falls apart into its pieces. A component's holes (pixels of other colours or of
   background inside it) are filled to give its body.
4. Fit a shape. The best of three templates (axis-aligned square, circle, upright isosceles
   triangle, sized from the coverage-weighted area, centred on the coverage centroid, each also
   tried Gaussian-blurred) by soft IoU with the body's silhouette (its foreground coverage, plus
   the partial coverage of the object's colour in a rim around it). That IoU, which falls when
   the body does not fill the fitted shape, is the confidence; the template gives the box.
   Components whose fitted side is below `min_size_fraction` of ShapeGen's smallest object side
   (`shapes.MIN_OBJECT_SIZE`) are specks and not reported. The floor is on the side, so it is the
   same size for every shape (an area floor would drop a triangle that a square of its side
   passes).
5. Judge it a single solid object (`Detection.solid`): a recognised shape (`min_confidence`)
   whose body is of one colour (`min_purity`: no lattice of one colour around others) and whose
   outline lies mostly against background or against other such objects (`min_isolation`: a
   piece of a mosaic, even one cut to a shape's outline, is surrounded by other pieces). Which
   neighbours count as objects is settled jointly (`_isolation`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from mdd.data import palette
from mdd.data import shapes

# Recorded with every ShapeGenEval result, so a number always names the scorer that made it.
SCORER_VERSION = "v3"


@dataclasses.dataclass(frozen=True)
class ScorerSettings:
  """Detector thresholds, calibrated on reference images, adversarial images and noise.

  Kept (tests): every object of ShapeGen renders at 32 and 64 px, also blurred, JPEG-compressed
  (quality 50) or noisy (sigma 16/255); touching objects of different colours. Rejected: random
  palette mosaics, colour confetti (filling the frame or cut to a shape's outline), attribute-
  swapped renders. The price: a generated object spotted with other colours over more than
  `1 - min_purity` of its body, or stuck to non-object clutter along more than
  `1 - min_isolation` of its outline, gets no credit where a person might still name it.

  Attributes:
    coverage_threshold: a pixel is foreground when its palette coverage is at least this.
    min_size_fraction: objects whose fitted side is below this fraction of the smallest object
      side ShapeGen draws (`shapes.MIN_OBJECT_SIZE` of the shorter image side) are specks.
    min_confidence: template IoU needed to detect an object (GenEval: detector score 0.3).
    counting_min_confidence: the stricter threshold for the counting tag (GenEval: 0.9).
    position_margin: GenEval's position threshold (fraction of the summed box sides).
    min_purity: share of an object's body (its component with holes filled) in its own colour.
    min_isolation: share of the ring around an object that is background or another object.
    denoise_above: estimated pixel noise (standard deviation, 0-255) above which the image is
      smoothed before unmixing.
  """
  coverage_threshold: float = 0.5
  min_size_fraction: float = 0.75
  min_confidence: float = 0.7
  counting_min_confidence: float = 0.75
  position_margin: float = 0.1
  min_purity: float = 0.8
  min_isolation: float = 0.8
  denoise_above: float = 6.0


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected object. Box in pixels: centre (cx, cy) and side lengths (w, h).

  `solid` is False for a component that is not a single solid object: its shape is not
  recognised (`confidence`) or most of its outline is against neither background nor other
  objects (`isolation`); the rules give it no credit. Components whose body is not of one colour
  (`purity`) are not reported at all.
  """
  shape: str
  color: str
  confidence: float
  cx: float
  cy: float
  w: float
  h: float
  area: float
  purity: float = 1.0
  isolation: float = 1.0
  solid: bool = True

  def as_dict(self) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in dataclasses.asdict(self).items()}


_BACKGROUND = np.array(palette.BACKGROUND, np.float32)
_NUM_COLORS = len(palette.COLOR_NAMES)
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
_DENOISE_SIGMA = 0.8  # Gaussian sigma (pixels) of the smoothing of noisy images.
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def min_object_side(shape: str, height: int, width: int,
                    settings: ScorerSettings = ScorerSettings()) -> float:
  """The smallest fitted side (pixels) at which a `shape` counts as an object, not a speck.

  ShapeGen draws every shape from the same size range, so the floor is one side for all shapes
  (its area, `side^2` times 1, pi/4 or 1/2, differs by shape).
  """
  if shape not in _TEMPLATE_AREA:
    raise ValueError(f"unknown shape {shape!r}; expected one of {tuple(_TEMPLATE_AREA)}")
  return settings.min_size_fraction * shapes.MIN_OBJECT_SIZE * min(height, width)


def noise_level(image: np.ndarray) -> float:
  """Robust estimate of the pixel noise's standard deviation (0-255 scale).

  The median absolute difference of neighbouring pixels, over both axes and all channels, scaled
  to a Gaussian's sigma: ShapeGen pictures are flat almost everywhere, so edges barely move the
  median while independent noise sets it.
  """
  pixels = image.astype(np.float32)
  diffs = np.concatenate([np.abs(np.diff(pixels, axis=0)).ravel(),
                          np.abs(np.diff(pixels, axis=1)).ravel()])
  return float(np.median(diffs) / (0.6745 * np.sqrt(2.0)))


def _unmix(image: np.ndarray):
  """Explains each pixel as background + a * (colour - background) for every palette colour.

  The colour is chosen by the RGB residual of that explanation. The coverage `a` is fitted in
  YCbCr with chroma down-weighted (`_CHROMA_WEIGHT`): JPEG keeps luma at full resolution but
  halves chroma, so luma carries the sharper edges of small shapes.
  Returns (best colour index [H, W], the coverage of every colour [H, W, colours]).
  """
  offset = image.astype(np.float32) - _BACKGROUND
  rgb_coverage = np.clip(offset @ _DIRECTIONS.T / np.sum(_DIRECTIONS ** 2, axis=1), 0.0, 1.0)
  residual = np.sum((offset[..., None, :] - rgb_coverage[..., None] * _DIRECTIONS) ** 2, -1)
  best = np.argmin(residual, axis=-1)
  coverage = np.clip(offset @ _COVERAGE_METRIC @ _DIRECTIONS.T / np.einsum(
      "cd,de,ce->c", _DIRECTIONS, _COVERAGE_METRIC, _DIRECTIONS), 0.0, 1.0)
  return best, coverage


def _majority_colours(colour: np.ndarray, foreground: np.ndarray) -> np.ndarray:
  """Each foreground pixel's colour replaced by the commonest among its foreground 3x3
  neighbours (itself included, and winning ties); -1 for background."""
  votes = np.zeros(colour.shape + (_NUM_COLORS,), np.float32)
  ys, xs = np.nonzero(foreground)
  votes[ys, xs, colour[ys, xs]] = 1.0
  counts = ndimage.uniform_filter(votes, size=(3, 3, 1), mode="constant") * 9
  counts[ys, xs, colour[ys, xs]] += 0.5
  return np.where(foreground, np.argmax(counts, axis=-1), -1)


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


def _colour_components(colours: np.ndarray):
  """8-connected components of each colour: (label map [H, W], 0 = none; colour per label)."""
  labels = np.zeros(colours.shape, np.int32)
  label_colour = [-1]
  for colour in np.unique(colours[colours >= 0]):
    own, num = ndimage.label(colours == colour, structure=_EIGHT_CONNECTED)
    labels[own > 0] = own[own > 0] + len(label_colour) - 1
    label_colour += [int(colour)] * num
  return labels, label_colour


@dataclasses.dataclass
class _Segmentation:
  """The colour segmentation of one image (see the module docstring, steps 1-3)."""
  coverage: np.ndarray      # [H, W, colours]: each pixel's coverage by each palette colour
  best_cover: np.ndarray    # [H, W]: the coverage by the pixel's best-explaining colour
  labels: np.ndarray        # [H, W]: component index, 0 for background
  label_colour: list[int]   # palette index of each component (-1 for label 0)
  sizes: np.ndarray         # pixels per component
  min_area: float           # the smallest object area (pixels) over all shapes


def _segment(image: np.ndarray, settings: ScorerSettings) -> _Segmentation:
  """Denoises (if noisy), unmixes and segments `image` by colour."""
  height, width = image.shape[:2]
  pixels = image.astype(np.float32)
  if noise_level(image) > settings.denoise_above:
    pixels = ndimage.gaussian_filter(pixels, (_DENOISE_SIGMA, _DENOISE_SIGMA, 0))
  best, coverage = _unmix(pixels)
  best_cover = np.take_along_axis(coverage, best[..., None], -1)[..., 0]
  colours = _majority_colours(best, best_cover >= settings.coverage_threshold)
  labels, label_colour = _colour_components(colours)
  min_area = min(_TEMPLATE_AREA[s] * min_object_side(s, height, width, settings) ** 2
                 for s in _TEMPLATE_AREA)
  return _Segmentation(coverage, best_cover, labels, label_colour,
                       np.bincount(labels.ravel(), minlength=len(label_colour)), min_area)


@dataclasses.dataclass
class _Candidate:
  """One component, its fitted shape and its solidity before its neighbours are judged."""
  index: int
  detection: Detection
  crop: tuple[slice, slice]
  ring: np.ndarray  # pixels within `_RIM` of the body, in `crop`


def _measure(seg: _Segmentation, index: int, window: tuple[slice, slice],
             settings: ScorerSettings) -> _Candidate | None:
  """Fits component `index` (bounding slices `window`); None for a speck or a component that
  cannot be a solid object."""
  height, width = seg.labels.shape
  colour_index = seg.label_colour[index]
  # A margin of `_RIM` pixels picks up the anti-aliased or blurred edge (coverage < threshold).
  y0, y1 = max(window[0].start - _RIM, 0), min(window[0].stop + _RIM, height)
  x0, x1 = max(window[1].start - _RIM, 0), min(window[1].stop + _RIM, width)
  crop = (slice(y0, y1), slice(x0, x1))
  crop_labels = seg.labels[crop]
  own = crop_labels == index
  body = ndimage.binary_fill_holes(own)
  ring = ndimage.binary_dilation(body, _EIGHT_CONNECTED, iterations=_RIM) & ~body
  # Other objects' pixels are not part of this one's rim; specks' pixels may be.
  others = (crop_labels > 0) & ~own & (seg.sizes[crop_labels] >= seg.min_area / 2)
  rim = ring & ~others
  purity = float(own.sum() / body.sum())
  # Cheap tests first (most components of a mosaic fail them): an impure body, or a ring mostly
  # of specks, which no neighbouring object can make up for, is not worth fitting.
  clear_at_most = float(((crop_labels[ring] == 0) | others[ring]).mean()) if ring.any() else 0.0
  if purity < settings.min_purity or clear_at_most < settings.min_isolation:
    return None
  own_cover = seg.coverage[crop][..., colour_index]
  # The silhouette: the body's foreground coverage whatever its colour, the rim's partial
  # coverage by the object's own colour.
  cover = np.where(body, seg.best_cover[crop], np.where(rim, own_cover, 0.0))
  area = float(cover.sum())
  if area < seg.min_area:
    return None
  shape, iou, (cx, cy, side) = _fit_shape(cover, body | rim, y0, x0)
  if side < min_object_side(shape, height, width, settings):
    return None
  detection = Detection(
      shape=shape, color=palette.COLOR_NAMES[colour_index], confidence=iou, cx=cx, cy=cy,
      w=side, h=side, area=area, purity=purity)
  return _Candidate(index, detection, crop, ring)


def _is_solid_shape(det: Detection, settings: ScorerSettings) -> bool:
  """A recognisable shape of one colour (`_measure` drops impure ones), whatever it touches."""
  return det.confidence >= settings.min_confidence and det.purity >= settings.min_purity


def _isolation(neighbours: list[np.ndarray], indices: list[int], shaped: list[bool],
               num_labels: int, min_isolation: float) -> list[float]:
  """Each candidate's share of its ring (`neighbours`: the labels there) that is background or
  another object.

  An object stands against background, or against other objects it touches, for most of its
  outline; a piece of a mosaic is surrounded by other pieces and specks. Which neighbours are
  objects is settled together: starting from every solid shape, those below `min_isolation` are
  dropped until none is, so a mosaic of shape-like pieces cannot vouch for itself piece by piece
  unless each piece stands clear of the rest.
  """
  clear = np.zeros(num_labels, bool)
  clear[0] = True
  clear[[i for i, ok in zip(indices, shaped) if ok]] = True
  while True:
    isolation = [float(clear[ring].mean()) if ring.size else 0.0 for ring in neighbours]
    dropped = [i for i, iso in zip(indices, isolation) if clear[i] and iso < min_isolation]
    if not dropped:
      return isolation
    clear[dropped] = False


def detect_objects(image: np.ndarray, settings: ScorerSettings = ScorerSettings()
                   ) -> list[Detection]:
  """All objects in a uint8 [H, W, 3] image, most confident first."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
  seg = _segment(image, settings)
  candidates = []
  for index, window in enumerate(ndimage.find_objects(seg.labels), start=1):
    if window is not None and seg.sizes[index] >= seg.min_area / 2:
      candidate = _measure(seg, index, window, settings)
      if candidate is not None:
        candidates.append(candidate)
  neighbours = [seg.labels[c.crop][c.ring] for c in candidates]
  shaped = [_is_solid_shape(c.detection, settings) for c in candidates]
  isolation = _isolation(neighbours, [c.index for c in candidates], shaped,
                         len(seg.label_colour), settings.min_isolation)
  found = [dataclasses.replace(c.detection, isolation=iso,
                               solid=ok and iso >= settings.min_isolation)
           for c, ok, iso in zip(candidates, shaped, isolation)]
  found.sort(key=lambda d: (-d.confidence, -d.area, d.cy, d.cx))
  return found
