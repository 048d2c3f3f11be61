r"""ShapeGen: procedurally rendered text-image pairs with GenEval-style ground truth.

Each example is a scene of 1-4 flat shapes (`palette.SHAPES`) painted in GenEval's colour words
on a neutral background, a caption from varied templates, and the structured ground truth in
GenEval's metadata schema (`tag`, `prompt`, `include[{class, count, color?, position?}]`,
`exclude`), where GenEval's "class" is the shape name. Scenes cover GenEval's six tags.

Everything is a pure function of `(seed, index, split)`: example `i` is drawn from its own
generator, so it never depends on any other example, on the resolution, or on the order of reads.
Layouts live in normalised coordinates (`cx`, `cy` in [0, 1] of the width/height, `size` = side of
the object's square bounding box as a fraction of the image's shorter side), so one scene renders
to the same picture at 32 px and at 512 px. Scenes for non-square images are laid out for their
aspect ratio (`aspect`), so gaps and relations hold in the rendered pixels.

The `heldout` split is compositional: the (colour, shape) pairs in `palette.HELDOUT_COLOR_SHAPE`
and the relations in `palette.HELDOUT_RELATIONS` (with their converses, which state the same fact)
never occur in `train`/`validation` scenes or captions; every `heldout` scene contains one of them.

Sample sheet:

  python -m mdd.data.shapes --out sheet.png --resolution 64 --num 36 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import textwrap
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mdd.data import palette

SPLITS = ("train", "heldout", "validation")
# Split ids enter the seed, so the three splits are independent streams for one `seed`.
_SPLIT_IDS = {"train": 0, "heldout": 1, "validation": 2}
# The last seed word of the pixel-noise stream (`generate_example`), apart from every split's.
_NOISE_STREAM = 1_000_003

# Layout, in units of the image's shorter side. Objects keep `_BORDER` from the image edge and
# `_GAP` between bounding boxes, so at 32 px there are ~2 background pixels between any two
# objects (connected components stay separate after anti-aliasing).
_BORDER = 0.03
_GAP = 0.06
MIN_OBJECT_SIZE = 0.22  # ~7 px at 32 px: still recognisable.
# Object side range by number of objects in the scene.
_SIZE_RANGE = {1: (0.30, 0.60), 2: (0.24, 0.42), 3: (0.22, 0.32), 4: (0.22, 0.30)}
# GenEval's relative-position rule with its 0.1 margin; ShapeGen's own position scenes satisfy
# the intended relation even with twice that margin and no other relation at GenEval's margin.
GENEVAL_POSITION_MARGIN = 0.1
_CLEAR_POSITION_MARGIN = 0.2
_MAX_OBJECTS = 12
# Every ShapeGen caption fits 64 byte tokens including the end marker (see mdd.data.text).
MAX_CAPTION_BYTES = 63
_MIN_RESOLUTION, _MAX_RESOLUTION = 32, 1024

_INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below",
                     "below": "above"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}


@dataclasses.dataclass(frozen=True)
class Obj:
  """One shape: centre (`cx`, `cy`) and bounding-box side `size`, all normalised (see module)."""
  shape: str
  color: str
  cx: float
  cy: float
  size: float


@dataclasses.dataclass(frozen=True)
class Scene:
  """A layout plus its caption and GenEval-schema metadata (`tag, prompt, include, exclude`).

  `objects` follow the order of `metadata["include"]`, each entry expanded `count` times.
  """
  tag: str
  objects: tuple[Obj, ...]
  caption: str
  metadata: dict


# ----------------------------------------------------------------------------------------------
# Vocabulary helpers.

_HELDOUT_PAIRS = frozenset(palette.HELDOUT_COLOR_SHAPE)
# A relation and its converse state the same fact; both are held out.
_HELDOUT_TRIPLES = frozenset(
    list(palette.HELDOUT_RELATIONS)
    + [(b, _INVERSE_RELATION[rel], a) for a, rel, b in palette.HELDOUT_RELATIONS])


def is_heldout_pair(color: str, shape: str) -> bool:
  return (color, shape) in _HELDOUT_PAIRS


def is_heldout_relation(subject: str, relation: str, reference: str) -> bool:
  """Whether "a `subject` `relation` a `reference`" (or its converse) is held out."""
  return (subject, relation, reference) in _HELDOUT_TRIPLES


def _train_colors(shape: str) -> list[str]:
  return [c for c in palette.COLOR_NAMES if not is_heldout_pair(c, shape)]


def _choice(rng: np.random.Generator, items: Sequence[Any]) -> Any:
  return items[int(rng.integers(len(items)))]


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(shape: str, color: str | None = None) -> str:
  words = f"{color} {shape}" if color else shape
  return f"{_article(words)} {words}"


# ----------------------------------------------------------------------------------------------
# Geometry.

def _relation_masks(subject: np.ndarray, reference: np.ndarray, margin: float) -> np.ndarray:
  """GenEval's relations, vectorised: [..., 3] (cx, cy, size) arrays -> bool [..., 4].

  The last axis follows `palette.RELATIONS` ("left of", "right of", "above", "below").
  """
  offset = subject[..., :2] - reference[..., :2]
  dims = (subject[..., 2] + reference[..., 2])[..., None]
  revised = np.maximum(np.abs(offset) - margin * dims, 0.0) * np.sign(offset)
  some = np.any(np.abs(revised) >= 1e-3, axis=-1)
  unit = revised / np.maximum(np.linalg.norm(offset, axis=-1, keepdims=True), 1e-12)
  dx, dy = unit[..., 0], unit[..., 1]
  return np.stack([dx < -0.5, dx > 0.5, dy < -0.5, dy > 0.5], axis=-1) & some[..., None]


def _extent(aspect: float) -> np.ndarray:
  """Image (width, height) in units of its shorter side, for `aspect` = width / height."""
  if not aspect > 0:
    raise ValueError(f"aspect (width / height) must be > 0, got {aspect}")
  return np.array([max(aspect, 1.0), max(1.0 / aspect, 1.0)])


def relations_between(subject: Obj, reference: Obj, margin: float = GENEVAL_POSITION_MARGIN,
                      aspect: float = 1.0) -> set[str]:
  """Relations of `subject` relative to `reference` by GenEval's rule (boxes, `margin`).

  The centre offset is shrunk per axis by `margin` times the sum of the two box sides; a
  relation holds when the shrunk offset, divided by the length of the raw offset, exceeds 0.5
  along its axis (image y grows downwards, so "above" is negative dy). Measured in pixels of an
  image of `aspect` = width / height.
  """
  extent = _extent(aspect)
  masks = _relation_masks(np.array([subject.cx, subject.cy, 1.0]) * [*extent, subject.size],
                          np.array([reference.cx, reference.cy, 1.0]) * [*extent, reference.size],
                          margin)
  return {rel for rel, holds in zip(palette.RELATIONS, masks) if holds}


def _clearly(subject: np.ndarray, reference: np.ndarray, relation: str,
             exclusive: bool) -> np.ndarray:
  """`relation` holds with a wide margin (and, if `exclusive`, no other one holds at all)."""
  which = palette.RELATIONS.index(relation)
  ok = _relation_masks(subject, reference, _CLEAR_POSITION_MARGIN)[..., which]
  if exclusive:
    at_geneval_margin = _relation_masks(subject, reference, GENEVAL_POSITION_MARGIN)
    ok &= at_geneval_margin.sum(-1) == 1
  return ok


_CANDIDATES = 64  # Positions tried at once per object (vectorised rejection sampling).


def _place_one(rng: np.random.Generator, placed: np.ndarray, index: int,
               constraints: Sequence[tuple[int, str, int]], exclusive: bool,
               size_range: tuple[float, float], extent: np.ndarray) -> np.ndarray | None:
  """(x, y, size) for object `index` that fits next to `placed`, or None if none was found.

  Coordinates are in units of the image's shorter side: x in [0, extent[0]], y in [0, extent[1]].
  """
  active = [(s, rel, r) for s, rel, r in constraints if max(s, r) == index]
  if not active and len(placed) == 0:  # The first free object always fits.
    size = rng.uniform(*size_range)
    low, high = _BORDER + size / 2, extent - _BORDER - size / 2
    return np.array([rng.uniform(low, high[0]), rng.uniform(low, high[1]), size])
  # Relations reject most positions, so try more of them at once.
  tries = _CANDIDATES * (4 if active else 1)
  for _ in range(4):
    size = rng.uniform(*size_range, tries)
    centre = _BORDER + size[:, None] / 2 + rng.uniform(0, 1, (tries, 2)) * (
        extent - 2 * _BORDER - size[:, None])
    candidates = np.concatenate([centre, size[:, None]], axis=1)
    fits = np.ones(tries, bool)
    if active:
      # Sample on the side of the partner that the first relation asks for, beyond the gap.
      s, relation, r = active[0]
      relation = relation if s == index else _INVERSE_RELATION[relation]
      partner = placed[r if s == index else s]
      axis = 0 if relation in ("left of", "right of") else 1
      reach = (size + partner[2]) / 2 + _GAP
      if relation in ("left of", "above"):
        low, high = _BORDER + size / 2, partner[axis] - reach
      else:
        low, high = partner[axis] + reach, extent[axis] - _BORDER - size / 2
      fits = high >= low
      if not fits.any():
        return None  # The partner leaves no room on that side.
      candidates[:, axis] = low + rng.uniform(0, 1, tries) * (high - low)
    reach = (candidates[:, None, 2] + placed[None, :, 2]) / 2 + _GAP
    apart = np.abs(candidates[:, None, :2] - placed[None, :, :2]) >= reach[..., None]
    fits &= np.all(np.any(apart, axis=-1), axis=1)
    for s, relation, r in active:
      subject = candidates if s == index else placed[s]
      reference = candidates if r == index else placed[r]
      fits &= _clearly(subject, reference, relation, exclusive)
    if fits.any():
      return candidates[np.argmax(fits)]
  return None


def _layout(rng: np.random.Generator, specs: Sequence[tuple[str, str]],
            constraints: Sequence[tuple[int, str, int]] = (), exclusive: bool = False,
            size_range: tuple[float, float] | None = None,
            aspect: float = 1.0) -> tuple[Obj, ...]:
  """Places `specs` [(shape, colour)] without overlap, honouring `(subject, relation, reference)`.

  Objects are placed one by one (a batch of random candidates per object, the first that fits
  wins; restart when stuck); if constraints are hard to meet, sizes shrink before giving up.
  Bounding boxes keep `_GAP` between each other and `_BORDER` from the edges. Layout happens in
  pixel proportions of an image of `aspect` = width / height, so relations hold in its pixels.
  """
  extent = _extent(aspect)
  num = len(specs)
  if num == 0:
    return ()
  if num > _MAX_OBJECTS:
    raise ValueError(f"ShapeGen lays out at most {_MAX_OBJECTS} objects, got {num}")
  low, high = size_range or _SIZE_RANGE.get(num, (0.16, 0.22))
  for restart in range(60):
    shrink = 0.93 ** (restart // 6)
    placed = np.zeros((0, 3))  # (cx, cy, size) of the objects placed so far.
    for index in range(num):
      found = _place_one(rng, placed, index, constraints, exclusive,
                         (low * shrink, high * shrink), extent)
      if found is None:
        break
      placed = np.concatenate([placed, found[None]])
    if len(placed) == num:
      return tuple(Obj(shape, color, float(x / extent[0]), float(y / extent[1]), float(size))
                   for (shape, color), (x, y, size) in zip(specs, placed))
  raise ValueError(f"cannot lay out {num} objects with constraints {list(constraints)}")


# ----------------------------------------------------------------------------------------------
# Scenes per tag. Each returns (specs, constraints, include, exclude, caption).

def _photo(rng: np.random.Generator, phrase: str) -> str:
  templates = ("a photo of {}", "{}", "an image of {}", "a picture of {}",
               "{} on a grey background", "a rendering of {}")
  # Only wrappers that keep the caption within MAX_CAPTION_BYTES.
  fitting = [t for t in templates if len(t.format(phrase)) <= MAX_CAPTION_BYTES] or ["{}"]
  return _choice(rng, fitting).format(phrase)


def _color_and_shape(rng, heldout):
  """One (colour, shape): a held-out pair, or a shape with one of its training colours."""
  if heldout:
    return _choice(rng, palette.HELDOUT_COLOR_SHAPE)
  shape = _choice(rng, palette.SHAPES)
  return _choice(rng, _train_colors(shape)), shape


def _single_object(rng, heldout):
  color, shape = _color_and_shape(rng, heldout)
  caption = _photo(rng, _noun_phrase(shape))
  return [(shape, color)], [], [{"class": shape, "count": 1}], [], caption


def _colors(rng, heldout):
  color, shape = _color_and_shape(rng, heldout)
  template = _choice(rng, ("a photo of {np}", "{np}", "an image of {np}", "a {shape} that is {c}",
                           "a {shape} coloured {c}", "{np} on a grey background"))
  caption = template.format(np=_noun_phrase(shape, color), shape=shape, c=color)
  return [(shape, color)], [], [{"class": shape, "count": 1, "color": color}], [], caption


def _two_shapes(rng):
  first, second = rng.choice(len(palette.SHAPES), size=2, replace=False)
  return palette.SHAPES[int(first)], palette.SHAPES[int(second)]


def _two_object(rng, heldout):
  shape_a, shape_b = _two_shapes(rng)
  color_a, color_b = _choice(rng, _train_colors(shape_a)), _choice(rng, _train_colors(shape_b))
  if heldout:
    color_a, shape_a = _choice(rng, palette.HELDOUT_COLOR_SHAPE)
    shape_b = _choice(rng, [s for s in palette.SHAPES if s != shape_a])
    color_b = _choice(rng, _train_colors(shape_b))
    if rng.integers(2):  # The held-out object is not always named first.
      shape_a, color_a, shape_b, color_b = shape_b, color_b, shape_a, color_a
  joiner = _choice(rng, ("{a} and {b}", "{a} with {b}", "{a} and also {b}"))
  caption = _photo(rng, joiner.format(a=_noun_phrase(shape_a), b=_noun_phrase(shape_b)))
  include = [{"class": shape_a, "count": 1}, {"class": shape_b, "count": 1}]
  return [(shape_a, color_a), (shape_b, color_b)], [], include, [], caption


def _counting(rng, heldout):
  count = int(rng.integers(palette.MIN_COUNT, palette.MAX_COUNT + 1))
  if heldout:
    heldout_color, shape = _choice(rng, palette.HELDOUT_COLOR_SHAPE)
    colors = [heldout_color] + [_choice(rng, _train_colors(shape)) for _ in range(count - 1)]
  else:
    shape = _choice(rng, palette.SHAPES)
    colors = [_choice(rng, _train_colors(shape)) for _ in range(count)]
  noun = _PLURALS[shape]
  template = _choice(rng, ("a photo of {n} {s}", "{n} {s}", "exactly {n} {s}", "a group of {n} {s}",
                           "an image of {n} {s}", "{d} {s}"))
  caption = template.format(n=_NUMBER_WORDS[count], s=noun, d=count)
  include = [{"class": shape, "count": count}]
  exclude = [{"class": shape, "count": count + 1}]
  return [(shape, c) for c in colors], [], include, exclude, caption


def _position(rng, heldout):
  if heldout:
    subject, relation, reference = _choice(rng, sorted(_HELDOUT_TRIPLES))
  else:
    while True:
      subject, reference = _two_shapes(rng)
      relation = _choice(rng, palette.RELATIONS)
      if not is_heldout_relation(subject, relation, reference):
        break
  color_ref = _choice(rng, _train_colors(reference))
  color_sub = _choice(rng, _train_colors(subject))
  # Half the captions also name the colours (then the metadata does too).
  with_colors = bool(rng.integers(2))
  phrase = _choice(rng, {"left of": ("left of", "to the left of", "on the left of"),
                         "right of": ("right of", "to the right of", "on the right of"),
                         "above": ("above",), "below": ("below", "beneath")}[relation])
  text = (f"{_noun_phrase(subject, color_sub if with_colors else None)} {phrase} "
          f"{_noun_phrase(reference, color_ref if with_colors else None)}")
  caption = _photo(rng, text)
  colors = ({"color": color_ref}, {"color": color_sub}) if with_colors else ({}, {})
  # GenEval's encoding: include[1] stands `relation` include[0].
  include = [{"class": reference, "count": 1, **colors[0]},
             {"class": subject, "count": 1, **colors[1], "position": [relation, 0]}]
  specs = [(reference, color_ref), (subject, color_sub)]
  return specs, [(1, relation, 0)], include, [], caption


def _color_attr(rng, heldout):
  shape_a, shape_b = _two_shapes(rng)
  if heldout:
    color_a, shape_a = _choice(rng, palette.HELDOUT_COLOR_SHAPE)
    shape_b = _choice(rng, [s for s in palette.SHAPES if s != shape_a])
    color_b = _choice(rng, [c for c in _train_colors(shape_b) if c != color_a])
    if rng.integers(2):
      shape_a, color_a, shape_b, color_b = shape_b, color_b, shape_a, color_a
  else:
    color_a = _choice(rng, _train_colors(shape_a))
    color_b = _choice(rng, [c for c in _train_colors(shape_b) if c != color_a])
  joiner = _choice(rng, ("{a} and {b}", "{a} with {b}", "{a} next to {b}"))
  caption = _photo(rng, joiner.format(a=_noun_phrase(shape_a, color_a),
                                      b=_noun_phrase(shape_b, color_b)))
  include = [{"class": shape_a, "count": 1, "color": color_a},
             {"class": shape_b, "count": 1, "color": color_b}]
  return [(shape_a, color_a), (shape_b, color_b)], [], include, [], caption


_TAG_BUILDERS = {"single_object": _single_object, "two_object": _two_object,
                 "counting": _counting, "colors": _colors, "position": _position,
                 "color_attr": _color_attr}
assert tuple(_TAG_BUILDERS) == palette.TAGS


def sample_scene(rng: np.random.Generator, tag: str | None = None, split: str = "train",
                 aspect: float = 1.0) -> Scene:
  """Draws a scene of `tag` (uniform over the six tags if None) for `split` ("train"|"heldout").

  `aspect` (width / height) of the image it will be rendered to; 1 for square images.
  """
  if split not in ("train", "heldout"):
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
  if tag is None:
    tag = _choice(rng, palette.TAGS)
  if tag not in _TAG_BUILDERS:
    raise ValueError(f"unknown ShapeGen tag {tag!r}; expected one of {palette.TAGS}")
  specs, constraints, include, exclude, caption = _TAG_BUILDERS[tag](rng, split == "heldout")
  objects = _layout(rng, specs, constraints, exclusive=True, aspect=aspect)
  metadata = {"tag": tag, "prompt": caption, "include": include, "exclude": exclude}
  return Scene(tag=tag, objects=objects, caption=caption, metadata=metadata)


def scene_from_metadata(metadata: dict, rng: np.random.Generator, aspect: float = 1.0) -> Scene:
  """Lays out objects that satisfy any GenEval-schema prompt over ShapeGen's vocabulary.

  Each `include` entry becomes `count` objects of its class (its colour, else a random one);
  `position: [relation, target]` must hold between every object of the entry and every object of
  `include[target]` (as GenEval checks it). Raises ValueError for classes or colours outside the
  vocabulary or when `exclude` contradicts `include`.
  """
  include = metadata.get("include")
  if not isinstance(include, list) or not include:
    raise ValueError(f"metadata needs a non-empty 'include' list, got {include!r}")
  specs: list[tuple[str, str]] = []
  groups: list[list[int]] = []
  for entry in include:
    shape, color = entry.get("class"), entry.get("color")
    count = int(entry.get("count", 1))
    if shape not in palette.SHAPES:
      raise ValueError(f"class {shape!r} is not a ShapeGen shape {palette.SHAPES}")
    if color is not None and color not in palette.COLORS:
      raise ValueError(f"color {color!r} is not a ShapeGen colour {palette.COLOR_NAMES}")
    if count < 1:
      raise ValueError(f"include count must be >= 1, got {count} for {shape!r}")
    groups.append(list(range(len(specs), len(specs) + count)))
    specs.extend((shape, color or _choice(rng, palette.COLOR_NAMES)) for _ in range(count))
  for entry in metadata.get("exclude", []):
    placed = sum(1 for shape, _ in specs if shape == entry.get("class"))
    if placed >= int(entry.get("count", 1)):
      raise ValueError(f"exclude {entry} contradicts include {include}")
  constraints = []
  for group, entry in zip(groups, include):
    if entry.get("position"):
      relation, target = entry["position"]
      if relation not in _INVERSE_RELATION or not 0 <= int(target) < len(include):
        raise ValueError(f"bad position {entry['position']!r} in {entry}")
      constraints += [(s, relation, r) for s in group for r in groups[int(target)]]
  objects = _layout(rng, specs, constraints, aspect=aspect)
  tag = metadata.get("tag", "")
  return Scene(tag=tag, objects=objects, caption=metadata.get("prompt", ""),
               metadata=dict(metadata))


# ----------------------------------------------------------------------------------------------
# Rendering.

def parse_resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
  """`resolution` (a side, or (height, width)) as (height, width); ValueError outside 32-1024."""
  if isinstance(resolution, (int, np.integer)):
    height = width = int(resolution)
  elif len(resolution) == 2:
    height, width = (int(r) for r in resolution)
  else:
    raise ValueError(f"resolution must be an int or (height, width), got {resolution!r}")
  for side in (height, width):
    if not _MIN_RESOLUTION <= side <= _MAX_RESOLUTION:
      raise ValueError(f"resolution sides must be in [{_MIN_RESOLUTION}, {_MAX_RESOLUTION}], "
                       f"got {(height, width)}")
  return height, width


def render(scene: Scene, resolution: int | tuple[int, int]) -> np.ndarray:
  """Renders `scene` to uint8 [H, W, 3]; `resolution` is a side or (height, width).

  Shapes are drawn at 4x and box-downsampled, i.e. anti-aliased by exact area averaging, so an
  object's interior pixels carry exactly its palette colour.
  """
  height, width = parse_resolution(resolution)
  supersample = 4
  canvas_h, canvas_w = height * supersample, width * supersample
  unit = min(canvas_h, canvas_w)
  canvas = Image.new("RGB", (canvas_w, canvas_h), palette.BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  for obj in scene.objects:
    half = obj.size * unit / 2
    x, y = obj.cx * canvas_w, obj.cy * canvas_h
    # PIL boxes include their last pixel, hence the -1.
    x0, y0, x1, y1 = round(x - half), round(y - half), round(x + half) - 1, round(y + half) - 1
    fill = palette.COLORS[obj.color]
    if obj.shape == "circle":
      draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
      draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
      draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
      raise ValueError(f"unknown shape {obj.shape!r}")
  return np.array(canvas.reduce(supersample))


def generate_example(seed: int, index: int, split: str, resolution: int | tuple[int, int],
                     tag: str | None = None, noise_std: float = 0.0) -> dict:
  """Example `index` of `split`: {"image" uint8 [H,W,3], "caption", "tag", "metadata" (json)}.

  `validation` draws from the train distribution with its own stream; `tag` restricts the tag.
  `noise_std` > 0 adds Gaussian pixel noise of that standard deviation (0-255 scale, rounded
  and clipped) from a stream of its own, so the scene and caption do not change with it: a
  tokenizer then spends many codes on texture (a stand-in for data that fills a large codebook).
  """
  if noise_std < 0:
    raise ValueError(f"noise_std must be >= 0, got {noise_std}")
  if split not in _SPLIT_IDS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if index < 0 or seed < 0:
    raise ValueError(f"seed and index must be >= 0, got seed={seed} index={index}")
  height, width = parse_resolution(resolution)
  rng = np.random.default_rng((int(seed), int(index), _SPLIT_IDS[split]))
  scene = sample_scene(rng, tag=tag, split="heldout" if split == "heldout" else "train",
                       aspect=width / height)
  image = render(scene, resolution)
  if noise_std > 0:
    noise_rng = np.random.default_rng((int(seed), int(index), _SPLIT_IDS[split], _NOISE_STREAM))
    image = np.clip(np.rint(image + noise_rng.normal(0.0, noise_std, image.shape)), 0, 255)
    image = image.astype(np.uint8)
  return {"image": image, "caption": scene.caption, "tag": scene.tag,
          "metadata": json.dumps(scene.metadata)}


# ----------------------------------------------------------------------------------------------
# Sample sheet CLI.

def sample_sheet(images: Sequence[np.ndarray], captions: Sequence[str], columns: int = 6,
                 cell: int = 128) -> Image.Image:
  """A grid of images (nearest-upscaled to `cell` wide) with wrapped captions under each."""
  font = ImageFont.load_default()
  line_height, chars_per_line, text_lines = 12, max(cell // 6, 8), 4
  first = images[0]
  cell_h = max(1, round(cell * first.shape[0] / first.shape[1]))
  rows = math.ceil(len(images) / columns)
  pad = 4
  slot_w, slot_h = cell + pad, cell_h + text_lines * line_height + 2 * pad
  sheet = Image.new("RGB", (columns * slot_w + pad, rows * slot_h + pad), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for i, (image, caption) in enumerate(zip(images, captions)):
    x, y = pad + (i % columns) * slot_w, pad + (i // columns) * slot_h
    sheet.paste(Image.fromarray(image).resize((cell, cell_h), Image.NEAREST), (x, y))
    for j, line in enumerate(textwrap.wrap(caption, chars_per_line)[:text_lines]):
      draw.text((x, y + cell_h + 2 + j * line_height), line, fill=(0, 0, 0), font=font)
  return sheet


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m mdd.data.shapes",
      description="Render a sample sheet of ShapeGen examples (image + caption) to a PNG.")
  parser.add_argument("--out", required=True, help="output PNG path")
  parser.add_argument("--resolution", type=int, default=64, help="image side in pixels (32-1024)")
  parser.add_argument("--width", type=int, default=0,
                      help="image width in pixels for a non-square aspect (0 = square)")
  parser.add_argument("--num", type=int, default=36, help="number of examples")
  parser.add_argument("--seed", type=int, default=0, help="dataset seed")
  parser.add_argument("--split", default="train", choices=SPLITS, help="dataset split")
  parser.add_argument("--tag", default=None, choices=palette.TAGS,
                      help="only this GenEval tag (default: all six)")
  parser.add_argument("--start", type=int, default=0, help="index of the first example")
  parser.add_argument("--columns", type=int, default=6, help="grid columns")
  parser.add_argument("--cell", type=int, default=128, help="displayed image width in pixels")
  args = parser.parse_args(argv)
  if args.num < 1:
    parser.error("--num must be >= 1")
  resolution = (args.resolution, args.width) if args.width else args.resolution
  examples = [generate_example(args.seed, args.start + i, args.split, resolution, tag=args.tag)
              for i in range(args.num)]
  sheet = sample_sheet([e["image"] for e in examples], [e["caption"] for e in examples],
                       columns=min(args.columns, args.num), cell=args.cell)
  sheet.save(args.out)
  print(f"wrote {args.out} ({args.num} examples, {sheet.width}x{sheet.height})")


if __name__ == "__main__":
  main()
