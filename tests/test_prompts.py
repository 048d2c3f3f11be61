"""ShapeGenEval's prompt set (`mdd.data.prompts`): stored files, GenEval's schema, the split."""

import collections

import pytest

from mdd.data import palette
from mdd.data import prompts as prompt_set
from mdd.data import shapes


@pytest.mark.parametrize("which", prompt_set.PROMPT_SETS)
def test_stored_prompt_files_regenerate_identically(tmp_path, which):
  path = tmp_path / "prompts.jsonl"
  prompt_set.write_prompts(str(path), prompt_set.build_prompts(which))
  with open(prompt_set.prompt_file(which), "rb") as f:
    assert path.read_bytes() == f.read()
  assert prompt_set.load_prompts(which) == prompt_set.build_prompts(which)


def test_prompt_sets_follow_geneval_schema_and_split():
  main, heldout = prompt_set.load_prompts("main"), prompt_set.load_prompts("heldout")
  assert collections.Counter(e["tag"] for e in main) == {t: 84 for t in palette.TAGS}
  assert collections.Counter(e["tag"] for e in heldout) == {
      "colors": 40, "position": 40, "color_attr": 40}
  for entry in main + heldout:
    assert list(entry)[0] == "tag" and entry["prompt"].startswith("a photo of ")
    assert set(entry) <= {"tag", "include", "exclude", "prompt"}
    for req in entry["include"]:
      assert req["class"] in palette.SHAPES and req.get("color", "red") in palette.COLORS
    if entry["tag"] == "counting":
      (inc,), (exc,) = entry["include"], entry["exclude"]
      assert exc == {"class": inc["class"], "count": inc["count"] + 1}
    if entry["tag"] == "position":
      assert entry["include"][1]["position"][1] == 0
      assert entry["include"][0]["class"] != entry["include"][1]["class"]

  def uses_heldout(entry):  # judged with ShapeGen's own definition of the held-out split
    inc = entry["include"]
    pairs = any(shapes.is_heldout_pair(r["color"], r["class"]) for r in inc if "color" in r)
    rels = any(shapes.is_heldout_relation(r["class"], r["position"][0],
                                          inc[r["position"][1]]["class"])
               for r in inc if "position" in r)
    return pairs or rels

  assert not any(uses_heldout(e) for e in main)
  assert all(uses_heldout(e) for e in heldout)
  # Every distinct main prompt of a small tag is used; repeats differ by at most one.
  counts = collections.Counter(e["prompt"] for e in main if e["tag"] == "colors")
  assert len(counts) == 25 and max(counts.values()) - min(counts.values()) <= 1
  with pytest.raises(ValueError, match="prompt set"):
    prompt_set.load_prompts("test")
