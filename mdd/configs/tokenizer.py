"""Default tokenizer config: model, losses, optimizer, GAN, codebook restarts, neighbours, eval.

Experiment configs take this section as `config.tokenizer` and override fields;
`mdd.models.tokenizer.tokenizer_from_config(config.tokenizer)` builds the model and
`mdd.train.tokenizer_task.make_task(config)` the training task. The defaults are the CPU tiny
setting: ShapeGen at 32 px, f = 4 (8 x 8 tokens), V = 1024 codes of dimension 8, trained for a few
minutes on 2 cores. `size_config(name)` returns the overrides of larger settings.

Measured 2026-11-28 on 2 shared CPU cores (load ~2 from other jobs), 300 steps at ~1.35 steps/s:

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=DIR --config.mode=train_tokenizer

took 4 min 03 s end to end and reached, on 1000 held-out ShapeGen images, PSNR 29.3 dB,
SSIM 0.90 and 97% codebook usage (400 steps: 30.3 dB, 98.6%, 6 min 37 s).
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """The tokenizer section; every field documented inline."""
  c = ml_collections.ConfigDict()

  # Model (read only by `tokenizer_from_config`).
  c.model = ml_collections.ConfigDict()
  c.model.variant = "tiny"          # size by name: micro | tiny | S | B | L (models/tokenizer.py)
  c.model.downsample_factor = 4     # f: 4, 8 or 16 (token grid = image / f)
  c.model.encoder = "conv"          # conv (VQGAN ResNet) | patch (each token sees its patch only)
  c.model.patch_depth = 2           # residual per-position MLPs of the patch encoder
  c.model.quantizer = "vq"          # vq | fsq
  c.model.vocab_size = 1024         # VQ codebook size V (FSQ: prod(fsq_levels))
  c.model.code_dim = 8              # VQ code dimension (L2-normalised, factorised projection)
  c.model.fsq_levels = (8, 8, 8, 5, 5, 5)  # FSQ levels per dimension (64000 codes)
  c.model.commitment_cost = 0.25    # beta * |z - sg(q)|^2
  c.model.codebook_cost = 1.0       # |sg(z) - q|^2
  c.model.lookup_block_size = 4096  # codes per block of the nearest-code scan
  c.model.entropy_weight = 0.0      # entropy regulariser on soft code assignments (0 = off)
  c.model.entropy_temperature = 0.01
  c.model.dtype = "float32"         # compute dtype: float32 | bfloat16

  # Training length and batch (global batch over all processes).
  c.num_steps = 300
  c.batch_size = 32
  c.ema_decay = 0.0                 # EMA of the generator params (0 = off; eval uses EMA if on)

  # Optimizer of the generator (encoder + quantizer + decoder): mdd.train.state.make_optimizer.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.num_steps = c.get_ref("num_steps")
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 1.0
  c.optimizer.min_lr_ratio = 0.1

  # Reconstruction losses.
  c.loss = ml_collections.ConfigDict()
  c.loss.l1_weight = 1.0
  c.loss.l2_weight = 1.0
  c.loss.perceptual_weight = 0.0    # > 0 needs `perceptual_weights` (local file, no download)
  c.loss.perceptual_weights = ""    # .npz / .safetensors with VGG16 `features.N.weight/bias`

  # Dead-code restart: codes whose usage EMA drops below threshold * (mean count per code)
  # are moved onto batch encodings, preferring encodings far from their current code.
  c.restart = ml_collections.ConfigDict()
  c.restart.every = 10              # steps between restarts (0 = never)
  c.restart.threshold = 0.1         # fraction of the mean per-code count per step
  c.restart.usage_decay = 0.99      # EMA decay of per-code counts
  c.restart.stop_fraction = 0.9     # no restarts in the last 10% of training (codes settle)

  # PatchGAN discriminator (off when weight == 0; then no discriminator is built).
  c.gan = ml_collections.ConfigDict()
  c.gan.weight = 0.0                # generator hinge loss weight (times the adaptive weight)
  c.gan.start_step = 2000           # the discriminator trains, and the loss applies, from here
  c.gan.adaptive_weight = True      # |grad rec| / |grad gan| at the decoder's last layer
  c.gan.max_adaptive_weight = 1e4
  c.gan.width = 64                  # first-layer channels
  c.gan.num_layers = 3              # stride-2 layers
  c.gan.lr = 1e-4
  c.gan.b1 = 0.5
  c.gan.b2 = 0.9

  # Neighbour table written next to the checkpoint (mdd/neighbours.py).
  c.neighbours = ml_collections.ConfigDict()
  c.neighbours.k = 32               # row length, the code itself included (VQ)
  c.neighbours.temperature = 0.1    # softmax(-d^2 / temperature), d on L2-normalised codes
  c.neighbours.self_mass = 0.5      # extra weight on the ground truth
  c.neighbours.block_size = 4096

  # Evaluation (final, written to DIR/tokenizer/eval.json).
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "heldout"
  c.eval.num_examples = 1000        # held-out ShapeGen images (at most data.heldout_size)
  c.eval.batch_size = 64
  c.eval.photos = False             # also scikit-image photos at 256 and 512 px (slow on CPU)

  # Pretokenization (mode=pretokenize): DIR/tokens/<split>/shard-NNNNN.npz.
  c.pretokenize = ml_collections.ConfigDict()
  c.pretokenize.splits = ("train", "validation")
  c.pretokenize.shard_size = 1024   # examples per shard (fixed: resuming relies on it)
  c.pretokenize.batch_size = 64     # images per encoder call

  # Loop settings handed to mdd.train.loop.train.
  c.loop = ml_collections.ConfigDict()
  c.loop.log_every = 50
  c.loop.ckpt_every = 500
  c.loop.summary_every = 0
  c.loop.eval_every = 0
  c.loop.keep_checkpoints = 2
  return c


# Overrides for larger settings (resolution is a data field, set by the experiment config).
SIZES = {
    # The CPU tiny default: 32 px, f=4, 8x8 tokens from the patch-local encoder, 512 codes.
    "tiny": {"model.encoder": "patch", "model.vocab_size": 512},
    # GPU/TPU: 256 px, f=16, VQGAN-B with 2^14 codes / LlamaGen-like; GAN after 20k steps.
    "B": {"model.variant": "B", "model.downsample_factor": 16, "model.vocab_size": 2 ** 14,
          "model.dtype": "bfloat16", "num_steps": 200_000, "batch_size": 256,
          "optimizer.lr": 1e-4, "optimizer.warmup_steps": 2000, "optimizer.grad_clip": 0.0,
          "ema_decay": 0.999, "gan.weight": 0.5, "gan.start_step": 20_000,
          "restart.every": 100, "restart.stop_fraction": 0.5},
    # The large-vocabulary setting: V = 2^18.
    "B_v18": {"model.variant": "B", "model.downsample_factor": 16, "model.vocab_size": 2 ** 18,
              "model.code_dim": 8, "model.dtype": "bfloat16", "num_steps": 200_000,
              "batch_size": 256, "optimizer.lr": 1e-4, "optimizer.warmup_steps": 2000,
              "optimizer.grad_clip": 0.0, "ema_decay": 0.999, "gan.weight": 0.5,
              "gan.start_step": 20_000, "restart.every": 100, "restart.stop_fraction": 0.5},
}


def size_config(name: str) -> ml_collections.ConfigDict:
  """`default_config()` with the overrides of size `name` (see `SIZES`)."""
  if name not in SIZES:
    raise ValueError(f"unknown tokenizer size {name!r}; known: {sorted(SIZES)}")
  c = default_config()
  for path, value in SIZES[name].items():
    node = c
    *parents, leaf = path.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c
