r"""The embedded default: ShapeGen at 32 px, a tiny VQ tokenizer and the `mu` denoiser, on CPU.

Runs the whole pipeline (train tokenizer -> pretokenize -> train denoiser -> sample -> eval):

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=workdirs/tiny

Override any field, e.g. `--config.denoiser_train.num_steps=200 --config.mode=train`.
Args (comma list after the colon):
  runlocal   shrink every stage for a smoke run of a minute or two;
  vN         a 2^N-code tokenizer, e.g. v14 (the CPU large-vocabulary ablation setting) or
             v16 (the GPU one).
"""

import re

import ml_collections

from mdd.configs import data as data_defaults
from mdd.configs import denoiser as denoiser_defaults
from mdd.configs import eval as eval_defaults
from mdd.configs import mesh as mesh_defaults
from mdd.configs import sampler as sampler_defaults
from mdd.configs import tokenizer as tokenizer_defaults


def get_config(arg=None):
  """The config; `arg` is a comma list of flags (`runlocal`, `vN`)."""
  args = _parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"  # pipeline | train_tokenizer | pretokenize | train | sample | eval
  c.pipeline_stages = "train_tokenizer,pretokenize,train,sample,eval"  # what pipeline runs
  c.seed = 0
  c.distributed = False  # jax.distributed.initialize() (also --distributed / MDD_DISTRIBUTED=1)
  c.compilation_cache_dir = ""  # JAX's persistent compilation cache (relative: in the workdir)

  # Device mesh (data, fsdp, tensor) and logical-axis rules: mdd/configs/mesh.py.
  c.mesh = mesh_defaults.default_mesh(data=-1)
  c.sharding_rules = mesh_defaults.DEFAULT_RULES

  # Data: procedural ShapeGen at 32 px, rendered once into a cache under the workdir.
  c.data = data_defaults.default_config()
  c.data.resolution = 32
  c.data.train_size = 20_000

  # Tokenizer: 32 px, f=4 -> 8x8 tokens from the patch-local encoder, VQ with 512 codes of dim 8
  # (`vN` sets 2^N codes).
  c.tokenizer = tokenizer_defaults.size_config("tiny")
  log2_vocab = [int(k[1:]) for k in args if re.fullmatch(r"v\d+", k)]
  if log2_vocab:
    c.tokenizer.model.vocab_size = 2 ** log2_vocab[-1]
  c.tokenizer.loop.tensorboard = True
  # 300 steps (30.3 dB). Fewer would give the denoiser CPU time (150 steps: ~85 s, +0.03 on
  # H200s at equal time) but lower the ShapeGenEval of the tokenizer's own reconstructions, the
  # ceiling of any denoiser on it: 0.883 at 300 steps, 0.819 at 200, 0.722 at 150
  # (docs/runs/shapes_tiny_2026-11-30_s13.json).
  c.tokenizer.num_steps = 300

  # Denoiser, text encoder, masking + edit corruption, GCE loss, training.
  c.update(denoiser_defaults.default_config())
  c.text.max_len = c.data.max_text_len
  # Hashed words instead of bytes: 17 text tokens instead of 64, a ~1.4x faster step on 2 cores
  # (mdd.experiments.speed), spent on more steps.
  c.text.kind = "word"
  # `mu` on 2 x 2 token patches (16 Transformer positions instead of 64) with 4 blocks: a CPU step
  # of 112 ms instead of 352 (6 blocks, no patches) and a 2.4x faster sampler, spent on 4000
  # instead of 1560 steps. Screened at equal CPU time on H200s, one tokenizer, ShapeGenEval v2:
  # 0.303 / 0.325 / 0.267 (seeds 0-2) vs 0.244 / 0.229 for the unpatched default; patches with
  # 6 blocks x 3000 steps 0.291 / 0.287 / 0.236, 3 blocks x 4800 0.273 (mean), 2 x 5900 0.238,
  # width 192 / 256 or batch 16 / 64 lower; 12000 steps of this model 0.662
  # (docs/runs/tiny_patch_screen_h200_2026-11-29_s12.json).
  c.denoiser.patch_size = 2
  c.denoiser.depth = 4
  # Sized so the whole pipeline fits 15 min on 2 cores (it ran 16:02 with the unpatched model).
  c.denoiser_train.num_steps = 4000
  c.denoiser_train.batch_size = 32
  c.denoiser_train.optim.lr = 1e-3
  c.denoiser_train.optim.warmup_steps = 100

  # Sampler (with token editing) and evaluations. Entropy-bounded unmasking with guidance: the
  # confidence policy commits the confident background first and leaves empty images here
  # (docs/results.md, docs/runs/shapes_tiny_2026-11-28b_sampler.json).
  c.sampler = sampler_defaults.default_config()
  c.sampler.unmask_policy = "entropy"
  # Guidance 3 and temperature 0.5 (were 6 and 0.8, chosen under ShapeGenEval v1, which credited
  # speckle): cleaner single-coloured objects, v2 0.234 / 0.256 / 0.282 vs 0.169 / 0.232 / 0.236
  # on three trained defaults (docs/runs/shapes_tiny_2026-11-29_s8_sampler.json).
  c.sampler.guidance_scale = 3.0
  c.sampler.temperature = 0.5
  # The last unmask step and the edit passes unguided, and edits at p(new) > 0.5 (was 0.9, which
  # never fires here): +0.015 / +0.016 / +0.012 on the same three models (0.234 -> 0.249,
  # 0.256 -> 0.272, 0.282 -> 0.294); each alone +0.006 on the first; 4 passes or threshold 0.3 no
  # better (docs/runs/shapes_tiny_2026-11-29_s9_sampler.json).
  c.sampler.guidance_interval = (0.0, 0.9)
  c.sampler.edit_threshold = 0.5
  c.sampler.num_steps = 12  # 12 / 16 / 24 steps scored alike (docs/results.md); 12 is cheapest
  c.eval = eval_defaults.default_config()

  # --config.mode=sample
  c.sample = ml_collections.ConfigDict()
  c.sample.prompts = ""          # "|"-separated; "" = a fixed set of ShapeGenEval prompts
  c.sample.prompts_file = ""     # one prompt per line
  c.sample.num_per_prompt = 1
  c.sample.seed_offset = 0
  c.sample.batch_size = 16
  c.sample.outdir = "samples"
  c.sample.gif_samples = 8       # samples shown in trajectory.gif
  c.sample.gif_scale = 4
  c.sample.edit_image = ""       # image editing: PATH of the image to edit
  c.sample.edit_box = ""         # "top,left,bottom,right" pixels to regenerate
  c.sample.edit_mask = ""        # PATH of a mask image (white = regenerate)
  c.sample.outpaint = ""         # "top,bottom,left,right" pixels added around the image

  if args.get("runlocal"):
    c.data.train_size = 2048
    c.data.validation_size = c.data.heldout_size = 256
    c.tokenizer.num_steps = 60
    c.tokenizer.eval.num_examples = 128
    c.denoiser_train.num_steps = 60
    c.denoiser_train.log_every = 20
    c.sampler.num_steps = 8
    c.eval.shapes_geneval.images_per_prompt = 1
  return c


def _parse_arg(arg):
  out = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if item:
      key, _, value = item.partition("=")
      out[key] = value if value else True
  return out
