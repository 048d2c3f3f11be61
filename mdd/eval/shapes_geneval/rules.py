"""GenEval's rules, as in its `evaluate_images.py`, over the detector's objects.

Includes are ANDed, excludes ORed; the top-`count` most confident objects of a class are checked
for colour (all must match) and position; "exactly N" is include N + exclude N+1; positions
compare box centres after shrinking the offset by 0.1 x (sum of both boxes' sides) per axis, and
a relation holds when the shrunk offset divided by the raw offset's length is beyond 0.5 along its
axis. Counting uses a stricter confidence threshold, as GenEval does. Detections that are not a
single solid object (`Detection.solid`) get no credit for including. For excluding ("too
many"), an object whose outline is not a clean shape but which is otherwise an object (one
colour, not a piece of a blob, mostly against background or objects, `_counts_as_extra`) counts
as the shape nearest to it: a person counting "three squares" counts a fourth square with a
tail or a notch too.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mdd.data import palette
from mdd.eval.shapes_geneval.detector import Detection, ScorerSettings, detect_objects


def relative_position(obj: Detection, target: Detection, margin: float = 0.1) -> set[str]:
  """Relations of `obj` relative to `target`, GenEval's rule (image y grows downwards)."""
  offset = np.array([obj.cx - target.cx, obj.cy - target.cy])
  dims = np.array([obj.w + target.w, obj.h + target.h])
  revised = np.maximum(np.abs(offset) - margin * dims, 0.0) * np.sign(offset)
  if np.all(np.abs(revised) < 1e-3):
    return set()
  dx, dy = revised / np.linalg.norm(offset)
  relations = set()
  if dx < -0.5:
    relations.add("left of")
  if dx > 0.5:
    relations.add("right of")
  if dy < -0.5:
    relations.add("above")
  if dy > 0.5:
    relations.add("below")
  return relations


def evaluate_detections(detections: Sequence[Detection], metadata: dict,
                        settings: ScorerSettings = ScorerSettings()) -> tuple[bool, str]:
  """GenEval's decision for one image from its detections (most confident first)."""
  threshold = (settings.counting_min_confidence if metadata.get("tag") == "counting"
               else settings.min_confidence)
  by_class: dict[str, list[Detection]] = {}
  for det in detections:
    if det.solid and det.confidence >= threshold:
      by_class.setdefault(det.shape, []).append(det)
  correct, reasons, matched_groups = True, [], []
  for req in metadata.get("include", []):
    classname, count = req["class"], int(req["count"])
    matched = True
    found = by_class.get(classname, [])[:count]
    if len(found) < count:
      correct = matched = False
      reasons.append(f"expected {classname}>={count}, found {len(found)}")
    else:
      if "color" in req:
        colors = [d.color for d in found]
        if colors.count(req["color"]) < count:
          correct = matched = False
          seen = ", ".join(f"{colors.count(c)} {c}" for c in palette.COLOR_NAMES if c in colors)
          reasons.append(f"expected {req['color']} {classname}>={count}, found "
                         f"{colors.count(req['color'])} {req['color']}; and {seen}")
      if "position" in req and matched:
        expected_rel, target_group = req["position"]
        if target_group >= len(matched_groups) or matched_groups[target_group] is None:
          correct = matched = False
          reasons.append(f"no target for {classname} to be {expected_rel}")
        else:
          for obj in found:
            for target in matched_groups[target_group]:
              true_rels = relative_position(obj, target, settings.position_margin)
              if expected_rel not in true_rels:
                correct = matched = False
                reasons.append(f"expected {classname} {expected_rel} target, found "
                               f"{' and '.join(sorted(true_rels))} target")
                break
            if not matched:
              break
    matched_groups.append(found if matched else None)
  for req in metadata.get("exclude", []):
    classname = req["class"]
    counted = len(by_class.get(classname, []))
    extra = sum(det.shape == classname and _counts_as_extra(det, settings)
                for det in detections)
    if counted + extra >= int(req["count"]):
      correct = False
      rough = f" ({extra} not a clean {classname})" if extra else ""
      reasons.append(f"expected {classname}<{req['count']}, found {counted + extra}{rough}")
  return correct, "\n".join(reasons)


def _counts_as_extra(det: Detection, settings: ScorerSettings) -> bool:
  """An object that gets no credit only because its outline is not a clean shape: it still
  makes "too many" of the shape nearest to it (`Detection.shape`)."""
  return (not det.recognised and det.confidence >= settings.min_confidence
          and det.contact <= settings.max_contact and det.isolation >= settings.min_isolation)


def score_image(image: np.ndarray, metadata: dict,
                settings: ScorerSettings = ScorerSettings()) -> dict:
  """Scores one image against GenEval metadata.

  Returns {"correct": bool, "reason": str (empty when correct), "detections": [dict, ...]}.
  """
  if not isinstance(metadata, dict) or "include" not in metadata:
    raise ValueError(f"metadata must be a GenEval dict with 'include', got {metadata!r}")
  detections = detect_objects(image, settings)
  correct, reason = evaluate_detections(detections, metadata, settings)
  return {"correct": correct, "reason": reason, "detections": [d.as_dict() for d in detections]}
