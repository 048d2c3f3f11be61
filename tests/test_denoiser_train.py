"""Denoiser training: one step on 8 fake devices equals 1 device, the `mu` model lowers the loss
on ShapeGen tokens, resuming continues the same loss curve, evaluation, frozen text, sampler.

ShapeGen tokens come from a fixed patch codebook (k-means on 4x4 patches of 32 px renders), so
these tests do not depend on the VQ tokenizer; the neighbour table is the codebook's kNN.
"""

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from mdd import defaults
from mdd.data import shapes
from mdd.data import text as text_lib
from mdd.models import denoiser as denoiser_lib
from mdd.models import system as system_lib
from mdd.train import denoiser as denoiser_task
from mdd.train import metrics as metrics_lib
from mdd.utils import sharding

VOCAB, PATCH, RES, TEXT_LEN = 128, 4, 32, 48


@functools.lru_cache(maxsize=None)
def shapegen_tokens(num=384, seed=0, k=4):
  """(batch dict of numpy arrays, neighbours [V, K], weights [V, K])."""
  examples = [shapes.generate_example(seed, i, "train", RES) for i in range(num)]
  images = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0
  g = RES // PATCH
  patches = images.reshape(num, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
  flat = patches.reshape(-1, PATCH * PATCH * 3)
  rng = np.random.default_rng(seed)
  codes = flat[rng.choice(len(flat), VOCAB, replace=False)].copy()

  def assign(codes):
    d = (flat ** 2).sum(1, keepdims=True) - 2 * flat @ codes.T + (codes ** 2).sum(1)[None]
    return d.argmin(1)

  for _ in range(6):
    labels = assign(codes)
    for v in np.unique(labels):
      codes[v] = flat[labels == v].mean(0)
  tokens = assign(codes).reshape(num, g, g).astype(np.int32)
  dist = ((codes[:, None] - codes[None]) ** 2).sum(-1)
  nbr = np.argsort(dist, axis=1, kind="stable")[:, :k]
  nbr[:, 0] = np.arange(VOCAB)  # Each group starts with the code itself.
  d = np.take_along_axis(dist, nbr, 1)
  weights = np.exp(-d / (np.median(d[:, 1:]) + 1e-6))
  weights[:, 0] += 1.0
  text = text_lib.ByteTokenizer(max_len=TEXT_LEN).encode_batch([e["caption"] for e in examples])
  batch = {"tokens": tokens, "text_ids": text["text_ids"], "text_len": text["text_len"]}
  return batch, nbr.astype(np.int32), weights.astype(np.float32)


def make_config(num_steps=40, batch_size=16, **overrides):
  c = defaults.base_config()
  c.text.max_len = TEXT_LEN
  c.text.width, c.text.depth, c.text.num_heads, c.text.mlp_dim = 32, 1, 2, 64
  c.denoiser_train.num_steps = num_steps
  c.denoiser_train.batch_size = batch_size
  c.denoiser_train.optim.warmup_steps = 5
  c.denoiser_train.optim.lr = 2e-3
  c.denoiser_train.log_every = 1
  c.denoiser_train.ckpt_every = 5
  c.denoiser_train.tensorboard = False
  c.denoiser_train.async_checkpoints = False
  c.denoiser_train.ema_decay = 0.9
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def make_system(config, tiny=True, **kw):
  batch, nbr, weights = shapegen_tokens()
  system = system_lib.system_from_config(config, vocab_size=VOCAB, neighbours=nbr,
                                            neighbour_weights=weights, **kw)
  if tiny:  # Smaller than `mu`, for the tests that compile several programs.
    scan = system.denoiser.scan_layers  # Two scanned blocks, so the scan really loops.
    small = denoiser_lib.Denoiser(vocab_size=VOCAB, width=32, depth=2 if scan else 1,
                                  num_heads=2, mlp_dim=64, dtype=system.denoiser.dtype,
                                  scan_layers=scan)
    system = dataclasses.replace(system, denoiser=small)
  return system, batch


def batches_from(batch, batch_size, seed=0):
  """Deterministic per-step batches: step s always gets the same examples (resumable)."""
  num = len(next(iter(batch.values())))

  def make_batches(start_step):
    step = start_step
    while True:
      idx = np.random.default_rng((seed, step)).choice(num, batch_size, replace=False)
      yield {k: v[idx] for k, v in batch.items()}
      step += 1

  return make_batches


def _mesh(devices, shape):
  return Mesh(np.array(devices).reshape(shape), ("data", "fsdp", "tensor"))


@pytest.mark.integration
@pytest.mark.parametrize("scan_layers", [False, True])
def test_train_step_on_8_devices_equals_1_device(scan_layers):
  # The model's own one-step draft as edit source: its Gumbel draws must not depend on the mesh.
  config = make_config(**{"denoiser.dtype": "float32", "loss.impl": "xla",
                          "masking.edit_source": "draft", "masking.edit_fraction": 0.3,
                          "denoiser.scan_layers": scan_layers})
  config.denoiser_train.optim.warmup_steps = 0
  config.denoiser_train.ema_decay = 0.0
  system, batch = make_system(config)
  task = denoiser_task.make_task(config, system, batches_from(batch, 16))
  host = next(task.make_batches(0))
  rules = sharding.DEFAULT_RULES
  results = []
  for mesh in (_mesh(jax.devices()[:1], (1, 1, 1)), _mesh(jax.devices(), (2, 2, 2))):
    state, shardings = sharding.create_sharded_state(task.init_state, mesh, rules,
                                                     jax.random.key(0))
    with sharding.mesh_context(mesh, rules):  # As mdd.train.loop runs the step.
      step = jax.jit(task.train_step, in_shardings=(shardings, None, None),
                     out_shardings=(shardings, None))
      device_batch = sharding.shard_batch(host, mesh)
      state, m = step(state, device_batch, jax.random.key(3))
      state, m2 = step(state, device_batch, jax.random.key(4))
    results.append((jax.device_get(nn.unbox(state.params)), jax.device_get(m),
                    jax.device_get(m2)))
    if mesh.size == 8:  # Weights really are sharded on the big mesh.
      block = state.params["denoiser"]["blocks" if scan_layers else "block_0"]
      kernel = block["mlp"]["wi_gate"]["kernel"].value
      spec = ("fsdp", "tensor")
      assert kernel.sharding.spec == jax.sharding.PartitionSpec(
          *((None,) + spec if scan_layers else spec))
  (p1, m1, n1), (p8, m8, n8) = results
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5)
    np.testing.assert_allclose(n8[key], n1[key], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), p8, p1)


def _train_losses(system, config, num_steps, batch_size):
  batch = shapegen_tokens()[0]
  task = denoiser_task.make_task(config, system, batches_from(batch, batch_size))
  state = jax.jit(task.init_state)(jax.random.key(0))
  step = jax.jit(task.train_step)
  batches = task.make_batches(0)
  losses = []
  for i in range(num_steps):
    state, metrics = step(state, jax.tree.map(jnp.asarray, next(batches)), jax.random.key(i))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  return np.asarray(losses)


@pytest.mark.integration
def test_tiny_denoiser_lowers_loss_on_shapegen_tokens():
  config = make_config(num_steps=40, batch_size=16)
  system, _ = make_system(config)
  losses = _train_losses(system, config, 40, 16)
  blocks = losses.reshape(4, 10).mean(1)
  assert blocks[-1] < blocks[0] - 0.3, blocks
  assert np.all(blocks[1:] < blocks[0]), blocks


@pytest.mark.slow
def test_mu_lowers_loss_steadily_on_shapegen_tokens():
  config = make_config(num_steps=300, batch_size=32)
  config.denoiser_train.optim.warmup_steps = 20
  system, _ = make_system(config, tiny=False)
  assert system.denoiser.width == denoiser_lib.VARIANTS["mu"].width
  losses = _train_losses(system, config, 300, 32)
  blocks = losses.reshape(10, 30).mean(1)
  print("mu loss per 30 steps:", np.round(blocks, 3))
  assert blocks[-1] < blocks[0] - 1.0, blocks
  # Steady: no block is worse than the best one before it (beyond noise), no blow-up.
  assert np.all(blocks[1:] <= np.minimum.accumulate(blocks)[:-1] + 0.05), blocks


@pytest.mark.integration
def test_resume_continues_the_same_loss_curve(tmp_path):
  from mdd.train import loop
  # The three runs compile the same programs: share them through the persistent cache.
  saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                               "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    _check_resume(loop, tmp_path)
  finally:
    for k, v in saved.items():
      jax.config.update(k, v)


def _check_resume(loop, tmp_path):
  config = make_config(num_steps=10, batch_size=8, **{"loss.impl": "chunked"})
  system, batch = make_system(config)
  mesh = _mesh(jax.devices()[:1], (1, 1, 1))
  rules = sharding.DEFAULT_RULES

  def run(workdir, stop_at):
    task = denoiser_task.make_task(config, system, batches_from(batch, 8),
                                   eval_batches=[next(batches_from(batch, 8, seed=1)(0))])
    task = dataclasses.replace(task, num_steps=stop_at)
    loop.train(task, config.denoiser_train, str(workdir), mesh, rules)
    return metrics_lib.read_jsonl(os.path.join(workdir, "denoiser", "metrics.jsonl"))

  straight = run(tmp_path / "a", 10)
  run(tmp_path / "b", 5)
  resumed = run(tmp_path / "b", 10)
  loss = lambda records: {r["step"]: r["loss"] for r in records if "loss" in r}
  a, b = loss(straight), loss(resumed)
  assert sorted(a) == list(range(1, 11)) and sorted(b) == list(range(1, 11))
  np.testing.assert_allclose([b[s] for s in range(6, 11)], [a[s] for s in range(6, 11)],
                             rtol=1e-5)
  with open(tmp_path / "b" / "denoiser" / "eval.json") as f:
    result = json.load(f)
  for key in ("loss", "masked_acc", "group_acc", "edit_detect", "edit_correct", "keep_acc"):
    assert key in result and np.isfinite(result[key])
  assert result["group_acc"] >= result["masked_acc"]


@pytest.mark.slow  # ~25 s: compiles MiniLM, a train step and the sampler.
def test_frozen_minilm_text_and_sampler_contract():
  from mdd import sampling as sampler_lib
  config = make_config(**{"text.kind": "minilm", "text.max_len": 8})
  system, batch = make_system(config)
  assert not system.trainable_text and system.text_dim == 384
  task = denoiser_task.make_task(config, system, batches_from(batch, 4))
  host = next(task.make_batches(0))
  assert host["text_emb"].shape == (4, 8, 384) and host["text_mask"].dtype == bool
  state = jax.jit(task.init_state)(jax.random.key(0))
  assert "text" not in state.params  # Frozen: not trained, not checkpointed.
  state, metrics = jax.jit(task.train_step)(state, jax.tree.map(jnp.asarray, host),
                                            jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))

  logits_fn = system.logits_fn((8, 8))
  context = system.sampling_context(state.params, ["a red circle", "a blue square"])
  cfg = sampler_lib.SamplerConfig(mask_id=VOCAB, num_steps=4, guidance_scale=2.0)
  tokens = jnp.full((2, 8, 8), VOCAB, jnp.int32)
  out = sampler_lib.sample(logits_fn, jax.random.key(2), tokens, cfg, context=context)
  final = np.asarray(out.tokens)
  assert final.shape[0] == 2 and final.min() >= 0 and final.max() < VOCAB


def test_config_errors():
  config = make_config(**{"loss.type": "gce"})
  with pytest.raises(ValueError, match="neighbour table"):
    system_lib.system_from_config(config, vocab_size=VOCAB)
  with pytest.raises(ValueError, match="vocab_size"):
    system_lib.system_from_config(config)
  with pytest.raises(ValueError, match="masking"):
    bad = make_config(**{"masking.weighting": "elbo"})
    make_system(bad)


def test_t2i_variants_follow_the_args_and_build():
  """(Validation of every config and arg: tests/test_configs.py.)"""
  import configs  # pylint: disable=import-outside-toplevel
  assert configs.load("t2i:res=512,variant=XL,source=tfds").denoiser.variant == "XL"
  config = configs.load("t2i:res=1024,variant=3B")
  assert config.mesh.fsdp == -1 and config.denoiser.remat and config.masking.shift == 5.0
  # The runlocal config builds a working system (byte text, mu).
  config = configs.load("t2i:runlocal")
  assert config.denoiser.variant == "mu"
  _, nbr, weights = shapegen_tokens()
  system = system_lib.system_from_config(config, vocab_size=VOCAB, neighbours=nbr,
                                         neighbour_weights=weights)
  assert system.trainable_text and system.masking.schedule == "shifted"


def test_images_are_tokenised_on_the_fly_with_encode_fn():
  config = make_config()
  system, batch = make_system(config)
  images = np.random.default_rng(0).integers(0, 256, (len(batch["tokens"]), 8, 8, 3), np.uint8)
  image_batch = {"image": images, "text_ids": batch["text_ids"], "text_len": batch["text_len"]}
  lookup = dict(zip(map(bytes, images), batch["tokens"]))  # A stand-in frozen tokenizer.
  encode_fn = lambda imgs: np.stack([lookup[bytes(i)] for i in imgs])
  task = denoiser_task.make_task(config, system, batches_from(image_batch, 4),
                                 encode_fn=encode_fn)
  host = next(task.make_batches(3))
  assert "image" not in host and host["tokens"].shape == (4, 8, 8)
  expected = next(batches_from(batch, 4)(3))["tokens"]
  np.testing.assert_array_equal(host["tokens"], expected)
  no_encoder = denoiser_task.make_task(config, system, batches_from(image_batch, 4))
  with pytest.raises(ValueError, match="encode_fn"):
    next(no_encoder.make_batches(0))
