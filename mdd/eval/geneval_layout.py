"""GenEval's image layout: write it from a `generate_fn`, read it back.

For the i-th line of an `evaluation_metadata.jsonl`:

  OUT/<i:05d>/metadata.jsonl        that line, as one JSON object
  OUT/<i:05d>/samples/<j:04d>.png   images_per_prompt samples (GenEval uses 4)

This is what GenEval's own `evaluation/evaluate_images.py OUT` reads (on a machine with its
detector), and what `mdd.eval.shapes_geneval.score_layout` scores offline. Sample j of prompt i
is generated with seed `seed + i * images_per_prompt + j`, so a layout does not depend on the
batch size, and an interrupted run resumes at the first incomplete prompt folder. A
`generate_fn` may carry a `fingerprint` (a JSON-able dict of what its images depend on: checkpoint
step, sampler settings); it is kept in OUT/generator.json, and a layout written with another
fingerprint is cleared and regenerated instead of resumed.

OUT may be local or a URL (`gs://`): files go through `mdd.utils.fileio`, each written whole
(a sample that exists is complete, so resuming never keeps a half-written PNG).

In a job of several processes every process calls `generate_layout` (the `generate_fn` of a
`Generator` is a collective): process 0 alone checks the fingerprint, finds the complete prompt
folders and hands that list to the others, so all of them generate the same batches; it alone
writes, and all leave together once its files are complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from mdd.utils import fileio

GenerateFn = Callable[[Sequence[str], Sequence[int]], np.ndarray]
_FOLDER = re.compile(r"^\d{5}$")
_SAMPLE = re.compile(r"^\d+\.png$")


def prompt_dir(outdir: str, index: int) -> str:
  return os.path.join(outdir, f"{index:05d}")


def sample_path(outdir: str, index: int, sample: int) -> str:
  return os.path.join(prompt_dir(outdir, index), "samples", f"{sample:04d}.png")


def _complete_prompts(outdir: str, count: int, images_per_prompt: int) -> set[int]:
  """The prompt indices below `count` whose folder holds metadata.jsonl and every sample (one
  listing of OUT, then one per prompt folder present)."""
  done = set()
  present = set(fileio.listdir(outdir))
  for index in range(count):
    if f"{index:05d}" not in present:
      continue
    folder = prompt_dir(outdir, index)
    samples = set(fileio.listdir(os.path.join(folder, "samples")))
    if (fileio.exists(os.path.join(folder, "metadata.jsonl"))
        and all(f"{j:04d}.png" in samples for j in range(images_per_prompt))):
      done.add(index)
  return done


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] image as a PNG, whole or not at all (`fileio`)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  fileio.write_bytes_atomic(path, buffer.getvalue())


def read_image(path: str) -> np.ndarray:
  """A local or remote image file as uint8 [H, W, 3]."""
  with Image.open(io.BytesIO(fileio.read_bytes(path))) as image:
    return np.asarray(image.convert("RGB"))


def write_prompt(outdir: str, index: int, metadata: dict, images: Sequence[np.ndarray]) -> None:
  """Writes one prompt folder: samples/<04d>.png, then metadata.jsonl."""
  images = [np.asarray(image) for image in images]
  for image in images:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"samples must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  fileio.makedirs(os.path.join(prompt_dir(outdir, index), "samples"))
  for j, image in enumerate(images):
    write_png(sample_path(outdir, index, j), image)
  fileio.write_text_atomic(os.path.join(prompt_dir(outdir, index), "metadata.jsonl"),
                           json.dumps(metadata))


def generate_layout(generate_fn: GenerateFn, metadata: Sequence[dict], outdir: str,
                    images_per_prompt: int = 4, batch_size: int = 64, seed: int = 0,
                    desc: str = "GenEval layout") -> str:
  """Generates every prompt's samples into `outdir`; skips prompt folders already complete.

  `generate_fn(prompts, seeds) -> uint8 [B, H, W, 3]` gets up to `batch_size` (prompt, seed)
  pairs per call, in order. Returns `outdir`.
  """
  if images_per_prompt < 1 or batch_size < 1:
    raise ValueError(f"images_per_prompt and batch_size must be >= 1, got "
                     f"{images_per_prompt}, {batch_size}")
  for i, entry in enumerate(metadata):
    if "prompt" not in entry:
      raise ValueError(f"metadata line {i} has no 'prompt': {entry!r}")
  from mdd.utils import sharding  # pylint: disable=g-import-not-at-top  (JAX: only to generate)

  def complete_prompts():
    _check_fingerprint(outdir, getattr(generate_fn, "fingerprint", None))
    return sorted(_complete_prompts(outdir, len(metadata), images_per_prompt))

  done = set(sharding.on_main_process(complete_prompts))
  todo = [i for i in range(len(metadata)) if i not in done]

  def on_complete(i, images):
    if sharding.is_main_process():
      write_prompt(outdir, i, metadata[i], images)

  generate_per_prompt(generate_fn, [m["prompt"] for m in metadata], todo, images_per_prompt,
                      batch_size, seed, on_complete, desc)
  sharding.sync_processes(f"layout written: {outdir}")
  return outdir


FINGERPRINT_FILE = "generator.json"


def _check_fingerprint(outdir: str, fingerprint: dict | None) -> None:
  """Clears prompt folders written by another generator setting; records the current one."""
  if fingerprint is None:
    return
  path = os.path.join(outdir, FINGERPRINT_FILE)
  previous = fileio.read_json_record(path)
  stale = [name for name in fileio.listdir(outdir) if _FOLDER.match(name)]
  if stale and previous != fingerprint:
    logging.warning("%s: images were made with other settings (%s); regenerating %d prompts",
                    outdir, "unknown" if previous is None else "changed", len(stale))
    for name in stale:
      fileio.rmtree(os.path.join(outdir, name))
  fileio.write_json_atomic(path, fingerprint)


def generate_per_prompt(generate_fn: GenerateFn, prompts: Sequence[str], todo: Sequence[int],
                        images_per_prompt: int, batch_size: int, seed: int,
                        on_complete: Callable[[int, list], None], desc: str) -> None:
  """Samples `images_per_prompt` images of each prompt index in `todo`, batched across prompts.

  Sample j of prompt i uses seed `seed + i * images_per_prompt + j`, so outputs do not depend on
  the batch size or on which prompts were already done. `on_complete(i, images)` is called as
  soon as all samples of prompt i are in.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from mdd.utils import sharding  # pylint: disable=g-import-not-at-top
  jobs = [(i, j) for i in todo for j in range(images_per_prompt)]
  pending: dict[int, list] = {}
  with tqdm(total=len(jobs), desc=desc, unit="img", leave=False,
            disable=not sharding.is_main_process()) as progress:
    for start in range(0, len(jobs), batch_size):
      chunk = jobs[start:start + batch_size]
      images = np.asarray(generate_fn([prompts[i] for i, _ in chunk],
                                      [seed + i * images_per_prompt + j for i, j in chunk]))
      if images.shape[0] != len(chunk):
        raise ValueError(f"generate_fn returned {images.shape[0]} images for {len(chunk)} "
                         "prompts")
      for (i, j), image in zip(chunk, images):
        pending.setdefault(i, [None] * images_per_prompt)[j] = image
        if all(im is not None for im in pending[i]):
          on_complete(i, pending.pop(i))
      progress.update(len(chunk))


def read_layout(outdir: str) -> list[dict]:
  """Reads a GenEval layout: [{"index", "metadata", "images": [sorted sample paths]}]."""
  if not fileio.isdir(outdir):
    raise ValueError(f"GenEval layout directory not found: {outdir!r}")
  entries = []
  for name in fileio.listdir(outdir):
    folder = os.path.join(outdir, name)
    if not _FOLDER.match(name) or not fileio.isdir(folder):
      continue
    meta_path = os.path.join(folder, "metadata.jsonl")
    if not fileio.isfile(meta_path):
      raise ValueError(f"{folder!r} has no metadata.jsonl")
    metadata = json.loads(fileio.read_text(meta_path))  # one JSON object, as GenEval reads it
    samples = os.path.join(folder, "samples")
    images = sorted(os.path.join(samples, n) for n in fileio.listdir(samples)
                    if _SAMPLE.match(n))
    entries.append({"index": int(name), "metadata": metadata, "images": images})
  return entries


def evaluate(generator, section, workdir: str) -> dict:
  """The `geneval` entry of `mdd.eval.registry`: GenEval's layout of the trained model."""
  metadata = [json.loads(line) for line in fileio.read_text(section.metadata_file).splitlines()
              if line.strip()]
  outdir = section.outdir or os.path.join(workdir, "eval", "geneval")
  return generate_layout(generator.generate_fn(int(section.batch_size)), metadata, outdir,
                         images_per_prompt=int(section.images_per_prompt),
                         batch_size=int(section.batch_size), seed=int(section.seed))
