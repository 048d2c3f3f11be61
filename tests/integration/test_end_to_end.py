"""The main job end to end at toy size: tokenizer -> pretokenize -> denoiser -> sample -> eval.

Step counts are tiny (the point is the data flow, artefacts and resume, not quality); the
quality bars of the real default are measured by running `configs/shapes_tiny.py` itself.
"""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOY = [
    "--config.data.train_size=256", "--config.data.validation_size=64",
    "--config.data.heldout_size=64",
    "--config.tokenizer.num_steps=4", "--config.tokenizer.batch_size=16",
    "--config.tokenizer.eval.num_examples=32", "--config.tokenizer.model.variant=micro",
    "--config.denoiser_train.num_steps=4", "--config.denoiser_train.batch_size=16",
    "--config.denoiser_train.log_every=2", "--config.denoiser_train.eval_batches=1",
    "--config.denoiser_train.tensorboard=False", "--config.tokenizer.loop.tensorboard=False",
    "--config.sampler.num_steps=4", "--config.sample.prompts=a photo of a red circle|two squares",
    "--config.sample.num_per_prompt=2",
]


def _main(workdir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "mdd.main", "--config=configs/shapes_tiny.py",
                         f"--workdir={workdir}", *TOY, *extra], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("e2e"))
  result = _main(workdir, "--config.pipeline_stages=train_tokenizer,pretokenize,train,sample")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_pipeline_leaves_the_workdir_artefacts(trained):
  workdir, result = trained
  for path in ["config.json", "tokenizer/eval.json", "tokenizer/neighbours.npz",
               "denoiser/eval.json", "denoiser/metrics.jsonl", "samples/grid.png",
               "samples/trajectory.gif"]:
    assert os.path.exists(os.path.join(workdir, path)), path
  with open(os.path.join(workdir, "tokenizer", "eval.json")) as f:
    assert {"psnr", "ssim", "codebook_usage"} <= set(json.load(f))
  with open(os.path.join(workdir, "denoiser", "eval.json")) as f:
    assert {"loss", "masked_acc"} <= set(json.load(f))
  pngs = [p for p in os.listdir(os.path.join(workdir, "samples")) if p[:4].isdigit()]
  assert len(pngs) == 4  # 2 prompts x 2 samples
  image = np.asarray(Image.open(os.path.join(workdir, "samples", sorted(pngs)[0])))
  assert image.shape == (32, 32, 3)
  gif = Image.open(os.path.join(workdir, "samples", "trajectory.gif"))
  assert gif.n_frames >= 4
  assert "=== pipeline done" in result.stdout


def test_rerun_resumes_instead_of_starting_over(trained):
  workdir, _ = trained
  result = _main(workdir, "--config.pipeline_stages=train_tokenizer,train")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "already trained to step 4" in result.stderr + result.stdout


def test_sample_rerun_keeps_matching_samples_and_redraws_on_a_change(trained):
  workdir, _ = trained
  grid = os.path.join(workdir, "samples", "grid.png")
  before = os.path.getmtime(grid)
  result = _main(workdir, "--config.mode=sample")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "already holds these samples" in result.stdout and os.path.getmtime(grid) == before
  with open(os.path.join(workdir, "config.json")) as f:
    drawn_at = json.load(f)["sampler"]["temperature"]
  changed = 0.9 if drawn_at != 0.9 else 0.7  # any value but the one the samples were drawn at
  result = _main(workdir, "--config.mode=sample", f"--config.sampler.temperature={changed}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sample: wrote 4 images" in result.stdout and os.path.getmtime(grid) > before


def test_sigterm_saves_the_current_step_and_the_rerun_resumes_there(tmp_path):
  """A kill by a scheduler or `timeout` loses no steps: SIGTERM saves, exits 143, resumes."""
  workdir = str(tmp_path)
  args = ["--config.pipeline_stages=train_tokenizer", "--config.tokenizer.num_steps=100000",
          "--config.tokenizer.loop.log_every=1", "--config.tokenizer.loop.ckpt_every=100000"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-m", "mdd.main", "--config=configs/shapes_tiny.py",
                           f"--workdir={workdir}", *TOY, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("[tokenizer] step 3/"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  (stopped,) = re.findall(r"stopped by SIGTERM after step (\d+)", err)
  saved = int(stopped)
  assert saved >= 3
  assert os.listdir(os.path.join(workdir, "tokenizer", "checkpoints")) == [stopped]
  result = _main(workdir, *args[:1], f"--config.tokenizer.num_steps={saved + 2}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from checkpoint step {saved}" in result.stderr + result.stdout
  assert f"step {saved + 2}/{saved + 2}" in result.stdout


def test_same_seed_same_sample_any_batch(trained):
  from mdd.inference import generator as generation  # pylint: disable=import-outside-toplevel
  workdir, _ = trained
  gen = generation.Generator.from_workdir(workdir)
  prompts = ["a photo of a blue square", "a photo of a circle", "two triangles"]
  together = gen.generate(prompts, [5, 6, 7])["tokens"]
  alone = gen.generate(prompts[1:2], [6])["tokens"]
  np.testing.assert_array_equal(together[1], alone[0])


def test_padded_batches_give_the_same_samples_and_one_compile(trained):
  from mdd.inference import generator as generation  # pylint: disable=import-outside-toplevel
  from mdd import sampling as sampler_lib  # pylint: disable=import-outside-toplevel
  workdir, _ = trained
  gen = generation.Generator.from_workdir(workdir)
  prompts = ["a photo of a blue square", "a photo of a circle", "two triangles"]
  alone = gen.generate(prompts, [5, 6, 7])
  padded = gen.generate(prompts, [5, 6, 7], pad_to=5)
  np.testing.assert_array_equal(padded["tokens"], alone["tokens"])
  np.testing.assert_array_equal(padded["images"], alone["images"])
  out, ref = padded["output"], alone["output"]
  for a, b in zip(jax_leaves(out.trajectory) + [out.stats["num_edited"]],
                  jax_leaves(ref.trajectory) + [ref.stats["num_edited"]]):
    np.testing.assert_array_equal(a, b)  # per-sample records keep the 3 real rows only
  np.testing.assert_array_equal(out.stats["temperature"], ref.stats["temperature"])
  with pytest.raises(ValueError, match="pad_to=2 is smaller than the batch of 3"):
    gen.generate(prompts, [5, 6, 7], pad_to=2)

  # 7 prompts in chunks of 4 (the last one padded) run one sampler program, and a second
  # Generator of the same run (the pipeline's eval stage after its sample stage) reuses it.
  fresh = gen.sampler_config(temperature=0.7)  # a config no other test compiled
  compiled = sampler_lib.sample._cache_size()  # pylint: disable=protected-access
  images = gen.generate_fn(4, temperature=0.7)(prompts * 2 + prompts[:1], list(range(7)))
  assert images.shape == (7, 32, 32, 3)
  again = generation.Generator.from_workdir(workdir)
  again.generate(prompts[:1], [0], sampler_cfg=fresh, pad_to=4)
  assert sampler_lib.sample._cache_size() == compiled + 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(images[3], gen.generate(prompts[:1], [3], sampler_cfg=fresh)
                                ["images"][0])


def jax_leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_eval_scores_the_trained_model(trained, tmp_path):
  from mdd.inference import generator as generation  # pylint: disable=import-outside-toplevel
  from mdd.data import prompts as prompts_lib  # pylint: disable=import-outside-toplevel
  from mdd.eval import geneval_layout, shapes_geneval  # pylint: disable=import-outside-toplevel
  workdir, _ = trained
  gen = generation.Generator.from_workdir(workdir)
  metadata = prompts_lib.load_prompts("main")[::84][:6]  # one prompt of each tag
  layout = geneval_layout.generate_layout(gen.generate_fn(8), metadata, str(tmp_path / "l"),
                                          images_per_prompt=2, batch_size=8)
  summary = shapes_geneval.score_layout(layout)
  assert summary["num_images"] == 12 and 0.0 <= summary["overall"] <= 1.0
  assert set(summary["tags"]) == {m["tag"] for m in metadata}


def test_missing_checkpoint_is_one_clear_line(tmp_path):
  result = _main(str(tmp_path), "--config.mode=sample")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("mdd: error: FileNotFoundError") and "tokenizer" in last


def test_training_on_images_encoded_on_the_fly_with_sample_summaries(trained):
  workdir, _ = trained
  result = _main(workdir, "--config.mode=train", "--config.denoiser_train.num_steps=6",
                 "--config.denoiser_train.source=images",
                 "--config.denoiser_train.summary_every=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 6/6" in result.stdout
  summary = os.path.join(workdir, "denoiser", "samples", "step_000006.png")
  assert os.path.exists(summary)
  assert np.asarray(Image.open(summary)).ndim == 3


def _source_image(tmp_path, index: int):
  """A 32 px ShapeGen validation image and the PNG path it was saved to."""
  from mdd.data import shapes  # pylint: disable=import-outside-toplevel
  source = shapes.generate_example(seed=0, index=index, split="validation",
                                   resolution=32)["image"]
  path = str(tmp_path / "input.png")
  Image.fromarray(source).save(path)
  return source, path


def test_sample_cli_inpaints_a_box_and_keeps_the_rest(trained, tmp_path):
  workdir, _ = trained
  source, path = _source_image(tmp_path, 3)
  result = _main(workdir, "--config.mode=sample", f"--config.sample.edit_image={path}",
                 "--config.sample.edit_box=8,8,24,24", "--config.sample.outdir=edited",
                 "--config.sample.prompts=a photo of a red circle",
                 "--config.sample.num_per_prompt=1")
  assert result.returncode == 0, result.stderr[-3000:]
  (png,) = [p for p in os.listdir(os.path.join(workdir, "edited")) if p.startswith("0000")]
  edited = np.asarray(Image.open(os.path.join(workdir, "edited", png)))
  outside = np.ones((32, 32), bool)
  outside[8:24, 8:24] = False  # the box is token-aligned (f=4), so nothing else may change
  np.testing.assert_array_equal(edited[outside], source[outside])


def test_sample_cli_outpaints_and_generates_on_another_canvas(trained, tmp_path):
  workdir, _ = trained
  source, path = _source_image(tmp_path, 5)
  result = _main(workdir, "--config.mode=sample", f"--config.sample.edit_image={path}",
                 "--config.sample.outpaint=0,8,0,16", "--config.sample.outdir=outpainted",
                 "--config.sample.prompts=a photo of a red circle",
                 "--config.sample.num_per_prompt=2")
  assert result.returncode == 0, result.stderr[-3000:]
  pngs = sorted(p for p in os.listdir(os.path.join(workdir, "outpainted")) if p[:4].isdigit())
  assert len(pngs) == 2
  for png in pngs:
    out = np.asarray(Image.open(os.path.join(workdir, "outpainted", png)))
    assert out.shape == (40, 48, 3)
    np.testing.assert_array_equal(out[:32, :32], source)  # the original stays where it was
  result = _main(workdir, "--config.mode=sample", "--config.sample.canvas=16,48",
                 "--config.sample.outdir=wide", "--config.sample.prompts=a photo of a square",
                 "--config.sample.num_per_prompt=1")
  assert result.returncode == 0, result.stderr[-3000:]
  (png,) = [p for p in os.listdir(os.path.join(workdir, "wide")) if p[:4].isdigit()]
  assert np.asarray(Image.open(os.path.join(workdir, "wide", png))).shape == (16, 48, 3)
  for bad, message in (("--config.sample.outpaint=0,0,0,8", "sample.edit_image is not"),
                       ("--config.sample.canvas=30,32", "positive multiples of 8")):
    result = _main(workdir, "--config.mode=sample", bad, "--config.sample.outdir=bad")
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
