r"""ShapeGen on one GPU (H200): 64 px, f=4 -> 16x16 tokens, 2^16 VQ codes, an `S` denoiser.

The quality reference of the repo (results in docs/results.md). Runs without TensorFlow (the GPU
image has none): the data path is pure numpy, metrics go to the log and metrics.jsonl.

  python -m mdd.main --config=configs/shapes_gpu.py --workdir=workdirs/gpu

Args: `vocab=18` (2^18 codes, the paper's largest vocabulary), `noise=12` (Gaussian pixel noise
of that standard deviation on every image, 0-255: the tokenizer then fills far more of a large
codebook; `data.noise_std`), `runlocal` (a short smoke run).
About 20 minutes on one H200: tokenizer ~85 s, pretokenize ~10 s, denoiser ~16 min (18000 steps
at ~21 steps/s), sample ~40 s, eval ~40 s.
"""

from configs import common
from configs import shapes_tiny
from mdd import defaults


def get_config(arg=None):
  args = common.parse_arg(arg, config_name="shapes_gpu", runlocal=False, vocab=16, noise=0)
  # The CPU default, scaled: the two configs differ only where the hardware does.
  c = shapes_tiny.get_config()

  # JAX's persistent compilation cache in DIR/jax_cache: a resumed run (a preempted job) loads
  # the train step and sampler instead of compiling them.
  c.compilation_cache_dir = "jax_cache"

  c.data.resolution = 64
  c.data.train_size = 100_000
  c.data.noise_std = float(args.noise)
  c.data.cache_dir = "data_cache"  # DIR/data_cache: rendered once (16 processes), then memmapped
  c.data.cache_workers = 16

  # Tokenizer: 64 px, f=4 -> 16x16 tokens from the patch-local encoder, the `S` decoder.
  c.tokenizer = defaults.tokenizer_config()
  c.tokenizer.model.variant = "S"
  c.tokenizer.model.encoder = "patch"
  c.tokenizer.model.downsample_factor = 4
  c.tokenizer.model.vocab_size = 2 ** args.vocab
  c.tokenizer.model.dtype = "bfloat16"
  c.tokenizer.num_steps = 1000
  c.tokenizer.batch_size = 128
  c.tokenizer.optimizer.lr = 1e-3
  c.tokenizer.loop.log_every = 200
  c.tokenizer.loop.ckpt_every = 1000
  c.tokenizer.eval.num_examples = 1000
  c.tokenizer.pretokenize.batch_size = 512

  c.denoiser.variant = "S"
  c.denoiser.depth = 0  # the variant's 12 blocks
  c.denoiser.patch_size = 1  # one token per position
  c.denoiser.attention_impl = "cudnn"
  c.loss.impl = "pallas"  # the fused GCE kernel
  c.denoiser_train.num_steps = 18000
  c.denoiser_train.batch_size = 128
  c.denoiser_train.optim.lr = 1e-3
  c.denoiser_train.optim.warmup_steps = 300
  c.denoiser_train.log_every = 200
  c.denoiser_train.ckpt_every = 5000  # a save costs ~2 s of training; SIGTERM saves too
  c.denoiser_train.tensorboard = False
  # Masks drawn towards high ratios (mean 0.75 vs the cosine's 0.64).
  c.masking.schedule = "shifted"
  c.masking.shift = 5.0

  # Sampler: 32 steps; strong guidance (5) with the clean-up (no guidance in the last unmask
  # step and the edit passes) and 4 edit passes at p > 0.5 that repaint speckled objects.
  c.sampler.num_steps = 32
  c.sampler.guidance_scale = 5.0
  c.sampler.temperature = 0.65
  c.sampler.guidance_interval = (0.0, 0.95)
  c.sampler.edit_threshold = 0.5
  c.sampler.num_edit_passes = 4
  # The sampler holds up to 16 bytes per image, token and code (mdd.inference.generator):
  # 256 images at 2^16 codes, 32 at 2^18, stay under 70 GiB.
  c.eval.shapes_geneval.batch_size = 256 if args.vocab <= 16 else 32
  # The sample stage pads its batch to the eval's size, so the eval stage reuses the sample
  # stage's compiled sampler instead of compiling another.
  c.sample.batch_size = c.eval.shapes_geneval.batch_size

  if args.runlocal:
    c.tokenizer.num_steps = 100
    c.denoiser_train.num_steps = 100
    c.eval.shapes_geneval.images_per_prompt = 1
  return c
