"""ShapeGenEval's `reworded` and `color_attr_new` prompt sets (`mdd.data.prompts`).

That the stored files regenerate byte for byte is `test_prompts.py`'s test over `PROMPT_SETS`.
"""

import collections
import json
import re

import jax
import numpy as np
import pytest

from mdd import defaults
from mdd.data import palette
from mdd.data import prompts as prompt_set
from mdd.data import shapes
from mdd.data import text as text_lib
from mdd.eval import geneval_layout
from mdd.eval import shapes_geneval as sg

_TRAIN_CAPTIONS_PER_TAG = 1500


def _metadata(entry):
  return {key: value for key, value in entry.items() if key != "prompt"}


def _words(text):
  """Words as the `word` text encoder splits them: runs of ASCII letters/digits, lower-cased."""
  return re.findall(r"[a-z0-9]+", text.lower())


# Shape, colour and number words -> placeholders; what is left is the caption's phrasing.
_PLACEHOLDERS = {**{c: "COLOR" for c in palette.COLOR_NAMES},
                 **{s: "SHAPE" for s in palette.SHAPES},
                 **{f"{s}s": "SHAPES" for s in palette.SHAPES},
                 "two": "NUMBER", "three": "NUMBER", "four": "NUMBER", "an": "a"}


def _phrasing(text):
  return " ".join("DIGITS" if w.isdigit() else _PLACEHOLDERS.get(w, w) for w in _words(text))


@pytest.fixture(scope="module")
def train_captions():
  """{tag: captions} of ShapeGen's train split (the captions the text encoder learns from)."""
  rng = np.random.default_rng(0)
  return {tag: [shapes.sample_scene(rng, tag, "train").caption
                for _ in range(_TRAIN_CAPTIONS_PER_TAG)] for tag in palette.TAGS}


def test_reworded_is_main_in_other_words():
  main, reworded = prompt_set.load_prompts("main"), prompt_set.load_prompts("reworded")
  assert len(reworded) == len(main) == 504
  assert [_metadata(e) for e in reworded] == [_metadata(e) for e in main]
  assert [list(e) for e in reworded] == [list(e) for e in main]  # same schema, same key order
  main_texts = {e["prompt"] for e in main}
  differs = np.mean([r["prompt"] != m["prompt"] for r, m in zip(reworded, main)])
  assert differs == 1.0
  assert not main_texts & {e["prompt"] for e in reworded}
  # Several wordings per tag, not one template swapped for another.
  wordings = collections.defaultdict(set)
  for entry in reworded:
    wordings[entry["tag"]].add(_phrasing(entry["prompt"]))
  assert all(len(wordings[tag]) >= 5 for tag in palette.TAGS), wordings


def test_reworded_uses_training_caption_phrasings_and_words(train_captions):
  """Every reworded prompt is phrased like a training caption of its tag, in its words."""
  reworded = prompt_set.load_prompts("reworded")
  vocabulary = {w for captions in train_captions.values() for c in captions for w in _words(c)}
  out_of_vocabulary = [w for e in reworded for w in _words(e["prompt"]) if w not in vocabulary]
  assert out_of_vocabulary == []
  max_words = defaults.text_config().max_words
  phrasings = {tag: {_phrasing(c) for c in captions} for tag, captions in train_captions.items()}
  for entry in reworded:
    assert _phrasing(entry["prompt"]) in phrasings[entry["tag"]], entry["prompt"]
    assert len(entry["prompt"].encode("utf-8")) <= shapes.MAX_CAPTION_BYTES
    assert len(_words(entry["prompt"])) < max_words  # the word encoder keeps every word


def test_word_encoder_sees_only_trained_buckets(train_captions):
  """The `word` encoder's hashed ids of reworded prompts all occur in training captions."""
  from mdd.models.text import word_ids  # pylint: disable=g-import-not-at-top
  cfg = defaults.text_config()
  tokenizer = text_lib.ByteTokenizer(max_len=64)

  def buckets(texts):
    batch = tokenizer.encode_batch(texts)
    mask = np.arange(64)[None, :] < batch["text_len"][:, None]
    ids, word_mask = jax.jit(word_ids, static_argnums=(2, 3))(  # One compile, not op by op.
        batch["text_ids"], mask, cfg.num_buckets, cfg.max_words)
    return set(np.asarray(ids)[np.asarray(word_mask)].tolist())

  trained = buckets([c for captions in train_captions.values() for c in captions])
  reworded = buckets([e["prompt"] for e in prompt_set.load_prompts("reworded")])
  assert reworded <= trained and len(reworded) > 30


def _combination(entry):
  return frozenset((r["color"], r["class"]) for r in entry["include"])


def test_color_attr_new_pairs_training_pairs_in_new_combinations():
  new = prompt_set.load_prompts("color_attr_new")
  main_combinations = {_combination(e) for e in prompt_set.load_prompts("main")
                       if e["tag"] == "color_attr"}
  heldout_combinations = {_combination(e) for e in prompt_set.load_prompts("heldout")
                          if e["tag"] == "color_attr"}
  assert len(new) == 84 and {e["tag"] for e in new} == {"color_attr"}
  combinations = [_combination(e) for e in new]
  assert len(set(combinations)) == 84  # no combination twice, in either order
  assert not set(combinations) & (main_combinations | heldout_combinations)
  for entry in new:
    assert list(entry) == ["tag", "include", "prompt"]
    first, second = entry["include"]
    assert first["class"] != second["class"] and first["color"] != second["color"]
    for req in (first, second):
      assert set(req) == {"class", "count", "color"} and req["count"] == 1
      assert not shapes.is_heldout_pair(req["color"], req["class"])
    nouns = [f"{'an' if r['color'][0] in 'aeiou' else 'a'} {r['color']} {r['class']}"
             for r in (first, second)]
    assert entry["prompt"] == f"a photo of {nouns[0]} and {nouns[1]}"


def test_each_prompt_text_names_one_metadata_across_sets():
  """The groundtruth generator looks metadata up by prompt text, over any mix of the sets."""
  by_text = collections.defaultdict(set)
  for which in prompt_set.PROMPT_SETS:
    for entry in prompt_set.load_prompts(which):
      by_text[entry["prompt"]].add(json.dumps(_metadata(entry), sort_keys=True))
  assert all(len(metadata) == 1 for metadata in by_text.values())


def _groundtruth_layout(which, outdir):
  prompts = prompt_set.load_prompts(which)
  geneval_layout.generate_layout(sg.groundtruth_generate_fn(prompts, 32), prompts, outdir,
                                 images_per_prompt=1, batch_size=128)
  summary = sg.score_layout(outdir)
  with open(f"{outdir}/results.jsonl") as f:
    records = [json.loads(line) for line in f]
  return summary, records


def test_groundtruth_renders_score_full_marks_on_every_set(tmp_path):
  """ShapeGen's renders are the ceiling on the new sets as on main; the scorer reads metadata
  only, so reworded prompts score image for image as their main counterparts."""
  summaries, records = {}, {}
  for which in ("main", "reworded", "color_attr_new"):
    summaries[which], records[which] = _groundtruth_layout(which, str(tmp_path / which))
  assert summaries["main"]["overall"] == 1.0
  assert summaries["reworded"]["overall"] == 1.0
  assert summaries["reworded"]["tags"] == {tag: 1.0 for tag in palette.TAGS}
  assert summaries["color_attr_new"]["tags"] == {"color_attr": 1.0}
  assert summaries["color_attr_new"]["num_images"] == 84
  # Same metadata and seeds give the same renders; scored without looking at the wording.
  for main, reworded in zip(records["main"], records["reworded"]):
    assert main["prompt"] != reworded["prompt"]
    assert (main["correct"], main["details"]) == (reworded["correct"], reworded["details"])
