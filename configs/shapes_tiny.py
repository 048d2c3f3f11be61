r"""The embedded default: ShapeGen, tiny tokenizer + `mu`-sized denoiser, all on 2 CPU cores.

Runs the whole pipeline (train tokenizer -> pretokenize -> train denoiser -> sample -> eval):

  python -m mdd.main --config=configs/shapes_tiny.py --workdir=/tmp/mdd_tiny

Override any field, e.g. `--config.denoiser_train.num_steps=200 --config.mode=train`.
`configs/shapes_tiny.py:runlocal` shrinks everything further for a smoke run (~1 minute).
"""

import ml_collections


def get_config(arg=None):
  """Returns the config; `arg` is a comma list of `key=value` or flags (`runlocal`)."""
  args = _parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"  # pipeline | train_tokenizer | pretokenize | train | sample | eval
  c.seed = 0

  # Device mesh: axes (data, fsdp, tensor); one size may be -1 (= the rest of the devices).
  # dcn_* sizes split each axis across slices/hosts (multi-slice TPU, multi-node GPU).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                          dcn_tensor=1))
  # Logical axis -> mesh axis rules (weights, then activations). None = replicated.
  c.sharding_rules = (
      ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", None),
      ("vocab", "tensor"), ("conv_in", None), ("conv_out", "tensor"), ("codebook", None),
      ("act_batch", ("data", "fsdp")), ("act_len", None), ("act_embed", None),
      ("act_heads", "tensor"), ("act_vocab", "tensor"),
  )

  # Data: procedural ShapeGen, no download.
  c.data = ml_collections.ConfigDict()
  c.data.source = "shapes"  # shapes | folder | tfds
  c.data.resolution = 32
  c.data.train_size = 20_000
  c.data.heldout_size = 512
  c.data.folder = ""          # for source=folder: directory holding manifest.jsonl + images
  c.data.tfds_name = ""       # for source=tfds
  c.data.max_text_len = 64    # bytes; longer captions are truncated (and counted)
  c.data.shuffle_buffer = 2048

  c.distributed = False  # call jax.distributed.initialize() (also: MDD_DISTRIBUTED=1)

  if args.get("runlocal"):
    c.data.train_size = 512
  return c


def _parse_arg(arg):
  out = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    out[key] = value if value else True
  return out
