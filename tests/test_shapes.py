"""ShapeGen: determinism, metadata vs. rendered pixels, held-out split, resolutions, CLI."""

import collections
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mdd.data import palette
from mdd.data import shapes

_PALETTE = np.array(list(palette.COLORS.values()), np.int32)


def _objects_from_pixels(image):
  """Re-detects objects: connected components of non-background pixels.

  Returns a list of dicts with the component's colour (nearest palette colour of its most common
  pixel value, i.e. of its interior), pixel bounding box and fill ratio (for the shape).
  """
  diff = np.abs(image.astype(np.int32) - np.array(palette.BACKGROUND)).max(-1)
  labels, num = ndimage.label(diff > 40, structure=np.ones((3, 3)))
  found = []
  for k in range(1, num + 1):
    ys, xs = np.nonzero(labels == k)
    pixels = image[ys, xs].astype(np.int32)
    values, counts = np.unique(pixels, axis=0, return_counts=True)
    mode = values[np.argmax(counts)]
    color = palette.COLOR_NAMES[int(np.argmin(((_PALETTE - mode) ** 2).sum(-1)))]
    # Coverage of each pixel by the object (anti-aliasing mixes colour and background
    # linearly); area over the covered width x height: 1/2 triangle, pi/4 circle, 1 square.
    ref = np.array(palette.COLORS[color])
    direction = ref - np.array(palette.BACKGROUND)
    cover = np.zeros(labels.shape)
    cover[ys, xs] = np.clip((pixels - palette.BACKGROUND) @ direction / (direction @ direction),
                            0, 1)
    fill = cover.sum() / (cover.max(0).sum() * cover.max(1).sum())
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    found.append(dict(color=color, exact=bool(np.all(mode == ref)), box=(x0, y0, x1, y1),
                      fill=fill, label=k))
  return found, labels


def _geneval_relations(box_a, box_b):
  """GenEval's rule, written out independently: relations of box A (x0, y0, x1, y1) to box B."""
  center_a = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
  center_b = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
  dims = [(box_a[2] - box_a[0]) + (box_b[2] - box_b[0]),
          (box_a[3] - box_a[1]) + (box_b[3] - box_b[1])]
  offset = [center_a[0] - center_b[0], center_a[1] - center_b[1]]
  revised = [max(abs(o) - 0.1 * d, 0) * np.sign(o) for o, d in zip(offset, dims)]
  if all(abs(r) < 1e-3 for r in revised):
    return set()
  norm = np.hypot(*offset)
  dx, dy = revised[0] / norm, revised[1] / norm
  return ({"left of"} if dx < -0.5 else set()) | ({"right of"} if dx > 0.5 else set()) | (
      {"above"} if dy < -0.5 else set()) | ({"below"} if dy > 0.5 else set())


def _shape_from_fill(fill):
  # Area over bounding box: triangle 1/2, circle pi/4, square 1.
  return "triangle" if fill < 0.64 else "circle" if fill < 0.9 else "square"


def _check_pixels_match(scene, image, check_shapes):
  """Asserts the rendered image agrees with the scene's objects and its GenEval metadata."""
  height, width = image.shape[:2]
  found, labels = _objects_from_pixels(image)
  assert len(found) == len(scene.objects), (scene.caption, len(found))
  by_label = {f["label"]: f for f in found}
  for obj in scene.objects:
    comp = by_label[labels[int(obj.cy * height), int(obj.cx * width)]]
    assert comp["exact"] and comp["color"] == obj.color, (scene.caption, comp, obj)
    if check_shapes:
      assert _shape_from_fill(comp["fill"]) == obj.shape, (scene.caption, comp, obj)
    comp["shape"] = obj.shape
  # The GenEval metadata, checked against what was re-detected from pixels only.
  metadata = scene.metadata
  groups = []
  for entry in metadata["include"]:
    group = [f for f in found if f["shape"] == entry["class"]
             and ("color" not in entry or f["color"] == entry["color"])]
    assert len(group) >= entry["count"], (metadata, found)
    groups.append(group)
  for entry in metadata["exclude"]:
    assert sum(f["shape"] == entry["class"] for f in found) < entry["count"], metadata
  if metadata["tag"] == "counting":
    assert len(found) == metadata["include"][0]["count"]
  for entry, group in zip(metadata["include"], groups):
    if "position" in entry:
      relation, target = entry["position"]
      for subject in group:
        for reference in groups[target]:
          rels = _geneval_relations(subject["box"], reference["box"])
          assert relation in rels, (metadata, rels)


def test_generate_example_is_deterministic_and_independent():
  first = shapes.generate_example(3, 17, "train", 32)
  for i in range(5):  # Other examples in between must not matter.
    shapes.generate_example(3, i, "train", 32)
  again = shapes.generate_example(3, 17, "train", 32)
  assert first.keys() == {"image", "caption", "tag", "metadata"}
  assert first["image"].dtype == np.uint8 and first["image"].shape == (32, 32, 3)
  np.testing.assert_array_equal(first["image"], again["image"])
  assert first["caption"] == again["caption"] and first["metadata"] == again["metadata"]
  others = [shapes.generate_example(s, i, sp, 32)
            for s, i, sp in [(4, 17, "train"), (3, 18, "train"), (3, 17, "validation")]]
  assert all(o["metadata"] != first["metadata"] for o in others)
  # Same scene at every resolution.
  big = shapes.generate_example(3, 17, "train", 128)
  assert big["metadata"] == first["metadata"]
  meta = json.loads(first["metadata"])
  assert meta["prompt"] == first["caption"] and meta["tag"] == first["tag"]


def test_pixel_noise_changes_only_the_pixels_and_is_reproducible():
  clean = shapes.generate_example(3, 17, "train", 64)
  noisy = shapes.generate_example(3, 17, "train", 64, noise_std=12.0)
  again = shapes.generate_example(3, 17, "train", 64, noise_std=12.0)
  assert noisy["caption"] == clean["caption"] and noisy["metadata"] == clean["metadata"]
  np.testing.assert_array_equal(noisy["image"], again["image"])
  diff = noisy["image"].astype(float) - clean["image"].astype(float)
  assert 11.0 < diff.std() < 13.0 and abs(diff.mean()) < 0.5  # the grey background: no clipping
  other = shapes.generate_example(3, 18, "train", 64, noise_std=12.0)
  other_clean = shapes.generate_example(3, 18, "train", 64)
  assert not np.array_equal(noisy["image"] - clean["image"], other["image"] - other_clean["image"])
  with pytest.raises(ValueError, match="noise_std must be >= 0"):
    shapes.generate_example(3, 17, "train", 64, noise_std=-1.0)


@pytest.mark.parametrize("resolution,num,check_shapes", [(32, 150, False), (64, 150, True)])
def test_metadata_matches_pixels(resolution, num, check_shapes):
  tags = collections.Counter()
  for index in range(num):
    split = ("train", "heldout")[index % 2]
    rng = np.random.default_rng((11, index))
    scene = shapes.sample_scene(rng, split=split)
    tags[scene.tag] += 1
    _check_pixels_match(scene, shapes.render(scene, resolution), check_shapes)
  assert set(tags) == set(palette.TAGS)


def test_object_sizes_and_gaps():
  for index in range(300):
    scene = shapes.sample_scene(np.random.default_rng((5, index)))
    for i, a in enumerate(scene.objects):
      assert a.size >= shapes.MIN_OBJECT_SIZE - 1e-9
      assert a.size / 2 <= min(a.cx, a.cy, 1 - a.cx, 1 - a.cy)
      for b in scene.objects[i + 1:]:
        reach = (a.size + b.size) / 2
        assert abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def test_tags_follow_geneval_schema():
  rng = np.random.default_rng(0)
  for tag in palette.TAGS:
    for _ in range(20):
      scene = shapes.sample_scene(rng, tag=tag)
      meta = scene.metadata
      assert meta["tag"] == tag and meta["prompt"] == scene.caption
      include = meta["include"]
      if tag in ("single_object", "colors"):
        assert len(include) == 1 and include[0]["count"] == 1
        assert ("color" in include[0]) == (tag == "colors")
        if tag == "colors":
          assert include[0]["color"] in scene.caption
      elif tag in ("two_object", "color_attr"):
        assert len(include) == 2 and include[0]["class"] != include[1]["class"]
        if tag == "color_attr":
          assert include[0]["color"] != include[1]["color"]
          assert all(e["color"] in scene.caption for e in include)
      elif tag == "counting":
        count = include[0]["count"]
        assert palette.MIN_COUNT <= count <= palette.MAX_COUNT
        assert meta["exclude"] == [{"class": include[0]["class"], "count": count + 1}]
        assert len(scene.objects) == count
      elif tag == "position":
        assert include[1]["position"][1] == 0 and include[1]["position"][0] in palette.RELATIONS
        subject, reference = scene.objects[1], scene.objects[0]
        relation = include[1]["position"][0]
        assert shapes.relations_between(subject, reference) == {relation}
        # The caption names the subject first and the metadata's relation, and no other.
        words = {"left of": ("left of",), "right of": ("right of",), "above": ("above",),
                 "below": ("below", "beneath")}
        named = {r for r, ws in words.items() if any(w in scene.caption for w in ws)}
        assert named == {relation}, scene.caption
        assert scene.caption.index(subject.shape) < scene.caption.index(reference.shape)
        # Clear margin: the relation survives twice GenEval's margin.
        assert include[1]["position"][0] in shapes.relations_between(subject, reference, 0.2)
      assert all(e["class"] in scene.caption for e in include)
      assert len(scene.caption.encode()) <= shapes.MAX_CAPTION_BYTES
  with pytest.raises(ValueError, match="unknown ShapeGen tag"):
    shapes.sample_scene(rng, tag="spatial")
  with pytest.raises(ValueError, match="split"):
    shapes.sample_scene(rng, split="test")


def _heldout_items(scene):
  pairs = {(o.color, o.shape) for o in scene.objects} & set(palette.HELDOUT_COLOR_SHAPE)
  # Every way a caption template can pair a colour word with a shape.
  words = {(c, s) for c, s in palette.HELDOUT_COLOR_SHAPE
           for phrase in (f"{c} {s}", f"{s} that is {c}", f"{s} coloured {c}")
           if phrase in scene.caption}
  words |= {(e["color"], e["class"]) for e in scene.metadata["include"]
            if (e.get("color"), e["class"]) in palette.HELDOUT_COLOR_SHAPE}
  relations = set()
  include = scene.metadata["include"]
  for entry in include:
    if "position" in entry:
      relation, target = entry["position"]
      triple = (entry["class"], relation, include[target]["class"])
      if shapes.is_heldout_relation(*triple):
        relations.add(triple)
  return pairs, words, relations


def test_heldout_never_leaks_into_train():
  for split in ("train", "validation"):
    for index in range(2500):
      example_rng = np.random.default_rng((1, index, shapes._SPLIT_IDS[split]))
      scene = shapes.sample_scene(example_rng, split="train")
      assert _heldout_items(scene) == (set(), set(), set()), (split, scene)
  seen_pairs, seen_relations = set(), set()
  for index in range(600):
    scene = shapes.sample_scene(np.random.default_rng((1, index, 1)), split="heldout")
    pairs, _, relations = _heldout_items(scene)
    assert pairs or relations, scene
    seen_pairs |= pairs
    seen_relations |= relations
  assert seen_pairs == set(palette.HELDOUT_COLOR_SHAPE)
  assert set(palette.HELDOUT_RELATIONS) <= seen_relations
  # Captions of held-out colour scenes name the held-out pair.
  for _ in range(50):
    scene = shapes.sample_scene(np.random.default_rng(_), tag="colors", split="heldout")
    assert _heldout_items(scene)[1]


def test_scene_from_metadata_satisfies_prompts():
  prompts = [
      {"tag": "single_object", "include": [{"class": "square", "count": 1}]},
      {"tag": "counting", "include": [{"class": "circle", "count": 4}],
       "exclude": [{"class": "circle", "count": 5}]},
      {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "pink"}]},
      {"tag": "position", "include": [{"class": "circle", "count": 1},
                                      {"class": "triangle", "count": 1,
                                       "position": ["below", 0]}]},
      {"tag": "color_attr", "include": [{"class": "square", "count": 1, "color": "brown"},
                                        {"class": "circle", "count": 1, "color": "white"}]},
      # Beyond GenEval: several objects in relation to several others.
      {"tag": "position", "include": [{"class": "square", "count": 2},
                                      {"class": "circle", "count": 2,
                                       "position": ["left of", 0]}]},
  ]
  rng = np.random.default_rng(0)
  for metadata in prompts:
    for _ in range(5):
      scene = shapes.scene_from_metadata(dict(metadata, prompt="p"), rng)
      scene.metadata.setdefault("exclude", [])
      _check_pixels_match(scene, shapes.render(scene, 64), check_shapes=True)
  with pytest.raises(ValueError, match="not a ShapeGen shape"):
    shapes.scene_from_metadata({"include": [{"class": "dog", "count": 1}]}, rng)
  with pytest.raises(ValueError, match="not a ShapeGen colour"):
    shapes.scene_from_metadata({"include": [{"class": "circle", "color": "teal"}]}, rng)
  with pytest.raises(ValueError, match="contradicts"):
    shapes.scene_from_metadata({"include": [{"class": "circle", "count": 2}],
                                "exclude": [{"class": "circle", "count": 2}]}, rng)


@pytest.mark.parametrize("resolution", [(32, 64), (96, 48), (64, 160)])
def test_aspect_ratio_scenes_match_pixels(resolution):
  height, width = resolution
  for index in range(60):
    tag = palette.TAGS[index % len(palette.TAGS)]
    scene = shapes.sample_scene(np.random.default_rng((3, index)), tag=tag,
                                split=("train", "heldout")[index % 2], aspect=width / height)
    _check_pixels_match(scene, shapes.render(scene, resolution), check_shapes=False)
  example = shapes.generate_example(0, 4, "train", resolution)
  assert example["image"].shape == (height, width, 3)


@pytest.mark.parametrize("resolution", [32, 48, 256, 512, (32, 64), (96, 48)])
def test_resolutions_and_aspect_ratios(resolution):
  height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
  scene = shapes.sample_scene(np.random.default_rng(7), tag="counting", aspect=width / height)
  image = shapes.render(scene, resolution)
  assert image.shape == (height, width, 3) and image.dtype == np.uint8
  found, _ = _objects_from_pixels(image)
  assert len(found) == len(scene.objects)
  unit = min(height, width)
  for f in found:  # Shapes keep their proportions: square boxes of side `size * min side`.
    x0, y0, x1, y1 = f["box"]
    assert abs((x1 - x0) - (y1 - y0)) <= 1
  sizes = sorted(f["box"][2] - f["box"][0] for f in found)
  expected = sorted(o.size * unit for o in scene.objects)
  np.testing.assert_allclose(sizes, expected, atol=1.5)
  # Anti-aliased: edge pixels mix object and background, interiors are exact.
  colours = {tuple(p) for p in image.reshape(-1, 3)}
  assert len(colours) > len(scene.objects) + 1


def test_bad_resolution():
  scene = shapes.sample_scene(np.random.default_rng(0))
  with pytest.raises(ValueError, match="resolution"):
    shapes.render(scene, 8)
  with pytest.raises(ValueError, match="resolution"):
    shapes.render(scene, (32, 32, 3))
  with pytest.raises(ValueError, match="split"):
    shapes.generate_example(0, 0, "test", 32)


def test_cli_writes_sample_sheet(tmp_path, capsys):
  out = tmp_path / "sheet.png"
  shapes.main(["--out", str(out), "--resolution", "32", "--num", "5", "--seed", "0",
               "--columns", "3", "--cell", "64"])
  sheet = np.asarray(Image.open(out))
  assert sheet.shape[1] == 3 * (64 + 4) + 4 and sheet.shape[0] > 2 * 64
  first = shapes.generate_example(0, 0, "train", 32)["image"]
  # The first cell is the first example, upscaled 2x (nearest).
  np.testing.assert_array_equal(sheet[4:68:2, 4:68:2, :3], first)
  with pytest.raises(SystemExit) as exit_info:
    shapes.main(["--help"])
  assert exit_info.value.code == 0
  assert "--resolution" in capsys.readouterr().out
