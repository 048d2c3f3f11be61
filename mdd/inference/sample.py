"""`--config.mode=sample`: prompts -> PNGs, `samples/grid.png`, `samples/trajectory.gif`.

Prompts come from `config.sample.prompts` ("|"-separated) or `config.sample.prompts_file` (one
per line), else 16 captions of the dataset's held-out split (`mdd.data.captions`; ShapeGen: a
fixed set of ShapeGenEval prompts). Each prompt gets `num_per_prompt` samples
with seeds `seed_offset + i`; a sample's seed alone decides it (not its batch).

Editing without fine-tuning: with `config.sample.edit_image=PATH` the image is tokenized and a
region regenerated for the prompt: `edit_box="top,left,bottom,right"` (pixels) or
`edit_mask=PATH` (white = regenerate) for inpainting, `outpaint="top,bottom,left,right"`
(pixels, multiples of the tokenizer's factor) to extend the canvas. Without an image,
`canvas="height,width"` (pixels) generates at another size than the training images (the
denoiser's 2-D RoPE takes any grid; quality away from the trained sizes is the model's).

Inputs and outputs may be local or URLs (`gs://`): files go through `mdd.utils.fileio`.

Several processes (one `jax.distributed` job) sample together on the train stage's mesh (see
`mdd.inference.generator`): each runs the same batches and receives every image, process 0
alone decides whether DIR/samples/ already holds these samples and writes every file of it,
and the others wait for it at the end, so the stage ends with the folder complete.
"""

from __future__ import annotations

import io
import json
import os
import re

import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from mdd import workdir as workdir_lib
from mdd.data import captions as captions_lib
from mdd.data import prompts as prompts_lib
from mdd.inference import generator as generation
from mdd.sampling import editing
from mdd.sampling import visualize
from mdd.utils import fileio
from mdd.utils import sharding


def _prompts(sample_cfg, data_cfg) -> list[str]:
  if sample_cfg.get("prompts_file"):
    path = sample_cfg.prompts_file
    if not fileio.exists(path):
      raise FileNotFoundError(f"sample.prompts_file {path} not found")
    prompts = [line.strip() for line in fileio.read_text(path).splitlines() if line.strip()]
  elif sample_cfg.get("prompts"):
    prompts = [p.strip() for p in str(sample_cfg.prompts).split("|") if p.strip()]
  elif not captions_lib.uses_prompt_set(data_cfg):
    prompts = captions_lib.validation_captions(data_cfg, 16)
  else:
    metadata = prompts_lib.load_prompts("main")
    # One prompt of each tag, then the next, ...: a varied default sheet.
    by_tag: dict[str, list[str]] = {}
    for m in metadata:
      by_tag.setdefault(m["tag"], []).append(m["prompt"])
    prompts = [p for group in zip(*by_tag.values()) for p in group][:16]
  if not prompts:
    raise ValueError("sample: no prompts given (sample.prompts or sample.prompts_file)")
  return prompts


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "prompt"


def _ints(text: str, n: int, what: str) -> list[int]:
  try:
    values = [int(v) for v in str(text).split(",")]
  except ValueError:
    values = []
  if len(values) != n:
    raise ValueError(f"sample.{what}={text!r}: expected {n} comma-separated integers")
  return values


def _load_image(path: str, hw: tuple[int, int]) -> np.ndarray:
  if not fileio.exists(path):
    raise FileNotFoundError(f"sample.edit_image {path} not found")
  try:
    with Image.open(io.BytesIO(fileio.read_bytes(path))) as img:
      img = img.convert("RGB").resize((hw[1], hw[0]), Image.BICUBIC)
      return np.asarray(img, np.uint8)
  except OSError as e:
    raise ValueError(f"sample.edit_image {path} is not a readable image: {e}") from None


def canvas_grid(gen: generation.Generator, sample_cfg) -> tuple[int, int]:
  """The token grid of `sample.canvas` ("height,width" pixels; "" = the training size)."""
  f = int(gen.tokenizer.downsample_factor)
  if not sample_cfg.get("canvas"):
    return gen.grid_shape
  height, width = _ints(sample_cfg.canvas, 2, "canvas")
  p = int(gen.system.denoiser.patch_size)
  if min(height, width) <= 0 or height % (f * p) or width % (f * p):
    raise ValueError(f"sample.canvas={sample_cfg.canvas!r}: height and width must be positive "
                     f"multiples of {f * p} (tokenizer factor {f} x patch size {p})")
  return height // f, width // f


def _edit_setup(gen: generation.Generator, sample_cfg, count: int):
  """An `EditSetup` for the configured edit, repeated `count` times, or None."""
  if not sample_cfg.get("edit_image"):
    given = [k for k in ("edit_box", "edit_mask", "outpaint") if sample_cfg.get(k)]
    if given:
      raise ValueError(f"sample.{given[0]} is set but sample.edit_image is not: name the "
                       "image to edit")
    return None
  if sample_cfg.get("canvas"):
    raise ValueError("sample.canvas applies to generation; with sample.edit_image the canvas "
                     "is the image (extend it with sample.outpaint)")
  hw = workdir_lib.image_hw(gen.config.data)
  image = _load_image(sample_cfg.edit_image, hw)
  images = np.repeat(image[None], count, axis=0)
  f = int(gen.tokenizer.downsample_factor)
  if sample_cfg.get("outpaint"):
    pad = _ints(sample_cfg.outpaint, 4, "outpaint")
    p = int(gen.system.denoiser.patch_size)
    if any(v % (f * p) for v in pad):
      raise ValueError(f"sample.outpaint={sample_cfg.outpaint!r}: each side must be a "
                       f"multiple of {f * p} pixels (tokenizer factor {f} x patch size {p})")
    return editing.prepare_outpainting(images, pad, gen.encode, f, gen.mask_id)
  if sample_cfg.get("edit_mask"):
    with Image.open(io.BytesIO(fileio.read_bytes(sample_cfg.edit_mask))) as img:
      mask = np.asarray(img.convert("L").resize((hw[1], hw[0]), Image.NEAREST)) > 127
  elif sample_cfg.get("edit_box"):
    mask = editing.box_to_pixel_mask(_ints(sample_cfg.edit_box, 4, "edit_box"), *hw)
  else:
    raise ValueError("sample.edit_image needs sample.edit_box, sample.edit_mask or "
                     "sample.outpaint")
  return editing.prepare_inpainting(images, mask, gen.encode, f, gen.mask_id)


def run(config, workdir: str):
  """Writes DIR/samples/: one PNG per sample, grid.png, trajectory.gif, done.json (what they
  were drawn with; returns None without drawing when it matches). Every process of a job calls
  it and gets the images; process 0 writes the files."""
  sample_cfg = config.sample
  gen = generation.Generator.from_workdir(workdir, config)
  prompts = _prompts(sample_cfg, config.data)
  per_prompt = int(sample_cfg.get("num_per_prompt", 1))
  all_prompts = [p for p in prompts for _ in range(per_prompt)]
  seeds = [int(sample_cfg.get("seed_offset", 0)) + i for i in range(len(all_prompts))]
  out_dir = workdir_lib.Workdir(workdir).samples_dir(sample_cfg.get("outdir", "samples"))
  batch_size = int(sample_cfg.get("batch_size", 16))
  # What the samples depend on (checkpoint step, sampler, this section): a re-run that finds
  # the same record (the pipeline resuming after a kill) keeps them instead of re-drawing.
  record = json.loads(json.dumps({**gen.fingerprint(gen.sampler_config()),
                                  "sample": sample_cfg.to_dict()}, default=str, sort_keys=True))
  done_path = os.path.join(out_dir, "done.json")
  # Process 0 reads the record, every process follows its answer (same batches everywhere).
  if sharding.on_main_process(lambda: fileio.read_json_record(done_path) == record):
    if sharding.is_main_process():
      print(f"sample: {out_dir} already holds these samples (denoiser step {gen.step}); "
            f"delete {done_path} to draw them again", flush=True)
    return None
  setup = _edit_setup(gen, sample_cfg, len(all_prompts))
  grid = canvas_grid(gen, sample_cfg)

  images, first = [], None
  for start in tqdm(range(0, len(all_prompts), batch_size), desc="sampling", unit="batch",
                    disable=not sharding.is_main_process()):
    stop = min(start + batch_size, len(all_prompts))
    if setup is not None:
      kwargs = dict(tokens=setup.tokens[start:stop], fixed=setup.fixed[start:stop])
    else:
      kwargs = dict(tokens=np.full((stop - start, *grid), gen.mask_id, np.int32))
    # Every batch at batch_size rows: one compiled sampler (the eval stage's too when their
    # batch sizes agree, as configs/shapes_gpu.py sets them).
    result = gen.generate(all_prompts[start:stop], seeds[start:stop], pad_to=batch_size,
                          **kwargs)
    batch_images = result["images"]
    if setup is not None:
      part = jax_tree_slice(setup, start, stop)
      # Both sides in uint8: the decoded region pasted into the original pixels.
      batch_images = np.asarray(editing.finish_edit(result["tokens"], gen.decode, part),
                                np.uint8)
    images.append(batch_images)
    if first is None:
      first = result
  images = np.concatenate(images)
  if sharding.is_main_process():
    _write_samples(out_dir, all_prompts, seeds, images, first["output"], setup, gen, sample_cfg)
    fileio.write_json_atomic(done_path, record)
    edits = np.asarray(first["output"].stats["num_edited"]).sum(axis=1).tolist()
    print(f"sample: wrote {len(images)} images to {out_dir} (denoiser step {gen.step}); "
          f"edits per step {edits}", flush=True)
  sharding.sync_processes("samples written")
  return images


def _write_samples(out_dir: str, prompts: list[str], seeds: list[int], images: np.ndarray,
                   out, setup, gen: generation.Generator, sample_cfg):
  """The PNGs, grid.png, prompts.txt and trajectory.gif (of the first batch's `out`); each
  lands whole, locally or remotely (the visualize writers go through fileio). Process 0 only:
  decoding the trajectory runs on this process's device alone."""
  fileio.makedirs(out_dir)
  for i, (prompt, image) in enumerate(zip(prompts, images)):
    visualize.save_png(os.path.join(out_dir, f"{i:04d}_{_slug(prompt)}.png"), image)
  columns = int(np.ceil(np.sqrt(len(images))))
  visualize.save_image_grid(os.path.join(out_dir, "grid.png"), images, columns=columns)
  fileio.write_text_atomic(
      os.path.join(out_dir, "prompts.txt"),
      "\n".join(f"{i:04d}\t{s}\t{p}" for i, (s, p) in enumerate(zip(seeds, prompts))))
  gif_n = min(int(sample_cfg.get("gif_samples", 8)), out.tokens.shape[0])
  if out.trajectory is not None and gif_n:
    trajectory = type(out.trajectory)(**{
        k: (None if v is None else v[:, :gif_n]) for k, v in vars(out.trajectory).items()})
    initial = None if setup is None else setup.tokens[:gif_n]
    visualize.save_trajectory_gif(os.path.join(out_dir, "trajectory.gif"), trajectory,
                                  gen.decode, gen.mask_id, initial_tokens=initial,
                                  scale=int(sample_cfg.get("gif_scale", 4)))


def jax_tree_slice(setup: editing.EditSetup, start: int, stop: int) -> editing.EditSetup:
  """Rows [start, stop) of every field of an EditSetup."""
  return editing.EditSetup(**{k: jnp.asarray(v)[start:stop] for k, v in vars(setup).items()})
