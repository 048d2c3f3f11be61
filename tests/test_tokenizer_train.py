"""Tokenizer training on the shared loop: steps on ShapeGen, GAN, restarts, export/load, SSIM."""

import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from mdd import defaults
from mdd import workdir as workdir_lib
from mdd.data import loader
from mdd.data import token_shards
from mdd.eval import reconstruction
from mdd.models import tokenizer as tokenizer_lib
from mdd.train import pretokenize
from mdd.train import tokenizer as tokenizer_task


def _config(**overrides):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.data = defaults.data_config()
  c.data.train_size = 64
  c.data.heldout_size = 16
  c.tokenizer = defaults.tokenizer_config()
  t = c.tokenizer
  t.model.variant = "micro"
  t.model.vocab_size = 128
  t.batch_size = 8
  t.num_steps = 3
  t.optimizer.warmup_steps = 0
  t.restart.every = 2
  t.neighbours.k = 4
  t.eval.num_examples = 8
  t.eval.batch_size = 8
  t.loop.log_every = 1
  t.loop.ckpt_every = 2
  for path, value in overrides.items():  # Paths relative to the tokenizer section.
    node = t
    *parents, leaf = path.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


@pytest.mark.integration
def test_train_steps_with_gan_restarts_and_falling_loss():
  """Direct jitted steps on ShapeGen: the discriminator (own optimizer) starts at
  gan.start_step, dead codes restart, the reconstruction loss falls."""
  config = _config(**{"gan.weight": 0.1, "gan.start_step": 1, "gan.width": 8,
                      "gan.num_layers": 2})
  task = tokenizer_task.make_task(config)
  state = jax.jit(task.init_state)(jax.random.key(0))
  step = jax.jit(task.train_step)
  batch = next(task.make_batches(0))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 32, 32, 3)
  codebook0 = np.asarray(nn.unbox(state.generator.params)["quant"]["codebook"])
  disc0 = jax.tree.map(np.asarray, nn.unbox(state.discriminator.params))
  losses = []
  for i in range(4):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics["rec_loss"]))
    disc = jax.tree.map(np.asarray, nn.unbox(state.discriminator.params))
    same = jax.tree.leaves(jax.tree.map(np.array_equal, disc0, disc))
    if i == 0:
      assert all(same)  # Before gan.start_step the discriminator is untouched.
      # Usage starts at 0, so the first step re-seeds (almost) every code from batch
      # encodings: all but the few codes this very batch already uses a lot.
      assert 100 <= float(metrics["restarted_codes"]) <= 128
      codebook1 = np.asarray(nn.unbox(state.generator.params)["quant"]["codebook"])
      assert not np.allclose(codebook0, codebook1)
    else:
      assert not all(same)
      assert float(metrics["adaptive_weight"]) > 0
  assert losses[-1] < losses[0]
  for key in ("psnr", "perplexity", "codebook_usage", "batch_codebook_usage", "l1", "mse",
              "commitment_loss", "codebook_loss", "loss", "disc_loss", "generator_gan_loss"):
    assert np.isfinite(float(metrics[key])), key
  assert 0 < float(metrics["batch_codebook_usage"]) <= 1
  assert int(state.step) == 4 and int(state.discriminator.step) == 3


def test_train_step_has_no_scatter():
  """The codebook gradient and the usage counts sort instead of scattering: XLA GPU's
  scatter-add of the few hot codes was 88% of the H200 tokenizer step (docs/benchmarks.md)."""
  task = tokenizer_task.make_task(_config())
  state = jax.eval_shape(task.init_state, jax.random.key(0))
  batch = next(task.make_batches(0))
  hlo = jax.jit(task.train_step).lower(state, batch, jax.random.key(1)).as_text()
  assert "stablehlo.gather" in hlo and "stablehlo.scatter" not in hlo


@pytest.mark.integration
def test_loop_run_export_load_and_pretokenize(tmp_path):
  """mode=train_tokenizer on 8 fake devices with EMA: eval.json, neighbours, then
  load_tokenizer returns the same model/params (checkpoint round trip), and pretokenize."""
  config = _config(ema_decay=0.9)
  workdir = str(tmp_path)
  state = tokenizer_task.train_and_export(config, workdir)
  out = os.path.join(workdir, "tokenizer")
  with open(os.path.join(out, "eval.json")) as f:
    results = json.load(f)
  for key in ("psnr", "ssim", "codebook_usage", "perplexity"):
    assert key in results and np.isfinite(results[key])
  assert 0 < results["codebook_usage"] <= 1
  run_dir = workdir_lib.Workdir(workdir)
  trained, table = run_dir.load_tokenizer(), run_dir.load_neighbours()
  model, params = trained.model, trained.params
  assert table.neighbours.shape == (128, 4) and (table.neighbours[:, 0] == np.arange(128)).all()
  expected = nn.unbox(state.eval_params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, expected)
  images = np.stack([loader.make_source(config.data, "heldout")[i]["image"] for i in range(2)])
  ids = model.apply({"params": params}, images, method="encode")
  assert ids.shape == (2, 8, 8)
  # mode=pretokenize with the exported tokenizer.
  config.tokenizer.pretokenize.shard_size = 8
  assert pretokenize.run(config, workdir, splits=["heldout"]) is None
  shards = token_shards.TokenShardSource(workdir_lib.Workdir(workdir).tokens_dir("heldout"))
  assert len(shards) == 16 and shards.token_shape == (8, 8)
  np.testing.assert_array_equal(shards[1]["tokens"], ids[1])
  # A rerun resumes at the last step: nothing to train, same eval.
  assert tokenizer_task.run(config, workdir) is None
  with open(os.path.join(out, "eval.json")) as f:
    assert json.load(f)["step"] == 3


def test_ssim_and_psnr_match_references():
  skimage_metrics = pytest.importorskip("skimage.metrics")
  rng = np.random.default_rng(0)
  a = rng.uniform(size=(2, 24, 20, 3))
  b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
  ours = reconstruction.ssim(a, b)
  for i in range(2):
    ref = skimage_metrics.structural_similarity(
        a[i], b[i], channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0)
    assert ours[i] == pytest.approx(ref, rel=1e-6)
    assert reconstruction.psnr(a, b)[i] == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(b[i], a[i], data_range=1.0), rel=1e-9)


def test_photo_images():
  pytest.importorskip("skimage")
  photos = reconstruction.photo_images(64)
  assert photos.shape == (4, 64, 64, 3) and photos.dtype == np.uint8
  assert photos.std() > 20  # Real photos, not blank.
