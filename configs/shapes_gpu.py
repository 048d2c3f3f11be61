r"""ShapeGen on one GPU (H200): 64 px, f=4 -> 16x16 tokens, 2^16 VQ codes, an `S` denoiser.

Runs without TensorFlow (the GPU image has none): the data path is pure numpy, metrics go to the
log and metrics.jsonl. The whole pipeline:

  python -m mdd.main --config=configs/shapes_gpu.py --workdir=workdirs/gpu

Args: `v18` (2^18 codes, the paper's largest vocabulary), `runlocal` (a short smoke run).

Status (2026-11-28, one H200, jax 0.11.2): not yet run to the end. Measured
(`benchmarks/speed_h200_shapes_gpu.json`, `docs/runs/shapes_gpu_2026-11-28_attempt.log`):
the ShapeGen cache renders 100k images in 5.8 s; the tokenizer stage takes 179 s (1000 steps at
8.4 steps/s, device-bound: 117 ms/step, host 1 ms) and reaches 39.2 dB PSNR / SSIM 0.987 on
1000 held-out images; pretokenize 10 s; the denoiser runs at ~6 steps/s (batch 128, 86.5M
params with the 2^16-row embedding and head), so 4000 steps need ~11 min: the whole run should
take ~16-17 min, inside the issue's 20, but longer than one 10-minute call of the lent machine
(resume it in a second call). Its ShapeGenEval is unmeasured. Why the `S` step is this slow
(~80 TFLOP/s of useful work) is open: `python -m mdd.experiments.speed
--config=configs/shapes_gpu.py --profile` traces it.
"""

import ml_collections

from mdd.configs import tokenizer as tokenizer_defaults


def get_config(arg=None):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  # Start from the CPU default and scale it: the two configs differ only where the hardware does.
  spec = importlib.util.spec_from_file_location(
      "shapes_tiny", os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_tiny.py"))
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  args = tiny._parse_arg(arg)  # pylint: disable=protected-access
  c = tiny.get_config()

  c.data.resolution = 64
  c.data.train_size = 100_000
  c.data.cache_dir = "data_cache"  # DIR/data_cache: rendered once (16 processes), then memmapped
  c.data.cache_workers = 16

  # Tokenizer: 64 px, f=4 -> 16x16 tokens from the patch-local encoder (as the CPU default),
  # the `S` decoder, 2^16 codes (2^18 with `v18`).
  c.tokenizer = tokenizer_defaults.default_config()
  c.tokenizer.model.variant = "S"
  c.tokenizer.model.encoder = "patch"
  c.tokenizer.model.downsample_factor = 4
  c.tokenizer.model.vocab_size = 2 ** 18 if args.get("v18") else 2 ** 16
  c.tokenizer.model.dtype = "bfloat16"
  c.tokenizer.num_steps = 1000
  c.tokenizer.batch_size = 128
  c.tokenizer.optimizer.lr = 1e-3
  c.tokenizer.loop.log_every = 200
  c.tokenizer.loop.ckpt_every = 1000
  c.tokenizer.eval.num_examples = 1000
  c.tokenizer.pretokenize.batch_size = 512

  c.denoiser.variant = "S"
  c.denoiser.attention_impl = "cudnn"
  c.loss.impl = "pallas"  # the fused GCE kernel
  c.denoiser_train.num_steps = 4000
  c.denoiser_train.batch_size = 128
  c.denoiser_train.optim.lr = 1e-3
  c.denoiser_train.optim.warmup_steps = 300
  c.denoiser_train.log_every = 200
  c.denoiser_train.ckpt_every = 1000
  c.denoiser_train.tensorboard = False

  c.sampler.num_steps = 16
  c.eval.shapes_geneval.batch_size = 256
  c.sample.batch_size = 64

  if args.get("runlocal"):
    c.tokenizer.num_steps = 100
    c.denoiser_train.num_steps = 100
    c.eval.shapes_geneval.images_per_prompt = 1
  return c
