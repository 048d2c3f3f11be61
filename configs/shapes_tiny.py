r"""The embedded default: ShapeGen at 32 px, a tiny VQ tokenizer and the `mu` denoiser, on CPU.

Runs the whole pipeline (train tokenizer -> pretokenize -> train denoiser -> sample -> eval) in
about 15 minutes on 2 CPU cores:

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=workdirs/tiny

Override any field, e.g. `--config.denoiser_train.num_steps=200 --config.mode=train`.
Args (comma list after the colon):
  runlocal   shrink every stage for a smoke run of a minute or two;
  long       train the denoiser 3x longer and sample with 24 steps (30-40 minutes);
  vocab=N    a 2^N-code tokenizer, e.g. vocab=14 (the CPU large-vocabulary ablation setting);
  noise=N    Gaussian pixel noise of standard deviation N (0-255) on every ShapeGen image, so
             the tokenizer uses many more of its codes (`data.noise_std`).
"""

from configs import common
from mdd import defaults


def get_config(arg=None):
  args = common.parse_arg(arg, config_name="shapes_tiny", runlocal=False, long=False, vocab=0,
                          noise=0)
  c = defaults.base_config()

  # Data: procedural ShapeGen at 32 px.
  c.data.resolution = 32
  c.data.train_size = 20_000
  c.data.noise_std = float(args.noise)

  # Tokenizer: 32 px, f=4 -> 8x8 tokens from the patch-local encoder, VQ with 512 codes of dim 8.
  # Its 300 steps bound the whole pipeline's quality: ShapeGenEval of its reconstructions
  # (`--generator=reconstruction`) is the ceiling of any denoiser trained on it.
  c.tokenizer = defaults.tokenizer_config("tiny")
  if args.vocab:
    c.tokenizer.model.vocab_size = 2 ** args.vocab
  c.tokenizer.loop.tensorboard = True
  c.tokenizer.num_steps = 300

  # Text: hashed words (17 tokens instead of 64 bytes): a faster step on CPU.
  c.text.max_len = c.data.max_text_len
  c.text.kind = "word"
  # Denoiser: `mu` on 2 x 2 token patches (16 Transformer positions) with 4 blocks.
  c.denoiser.patch_size = 2
  c.denoiser.depth = 4
  c.denoiser_train.num_steps = 4000
  c.denoiser_train.batch_size = 32
  c.denoiser_train.optim.lr = 1e-3
  c.denoiser_train.optim.warmup_steps = 100

  # Sampler: entropy-bounded unmasking (the confidence policy commits the background first and
  # leaves empty images on this model), guidance 3 without guidance on the last unmask step and
  # the edit passes, and edits of visible tokens at p(new) > 0.5.
  c.sampler.unmask_policy = "entropy"
  c.sampler.guidance_scale = 3.0
  c.sampler.temperature = 0.5
  c.sampler.guidance_interval = (0.0, 0.9)
  c.sampler.edit_threshold = 0.5
  c.sampler.num_steps = 12

  if args.long:
    c.denoiser_train.num_steps = 12_000
    c.sampler.num_steps = 24
  if args.runlocal:
    c.data.train_size = 2048
    c.data.validation_size = c.data.heldout_size = 256
    c.tokenizer.num_steps = 60
    c.tokenizer.eval.num_examples = 128
    c.denoiser_train.num_steps = 60
    c.denoiser_train.log_every = 20
    c.sampler.num_steps = 8
    c.eval.shapes_geneval.images_per_prompt = 1
  return c
