r"""Text-to-image on your own image-text data (ArrayRecord shards, a folder or TFDS) at 256, 512
or 1024 px.

The tokenizer (VQ, f=16, 2^14 codes; `vocab=18` for 2^18), the denoiser variant, the text
encoder and the masking schedule follow the resolution. Typical runs on a GPU/TPU host:

  python -m mdd.main --config=configs/t2i.py:res=256,variant=B \
      --config.data.folder=/data/my_pairs --workdir=/ckpt/t2i_256_B \
      --config.eval.geneval.metadata_file=/bench/geneval/evaluation_metadata.jsonl \
      --config.eval.dpg.prompts_dir=/bench/dpg/prompts \
      --config.eval.fid.weights=/weights/pt_inception.pth --config.eval.fid.ref_stats=/ref.npz
  python -m mdd.data.convert --input=/data/laion_tars --format=webdataset --output=gs://b/pairs
  python -m mdd.main --config=configs/t2i.py:res=256,variant=1B,source=arrayrecord \
      --config.data.records=gs://b/pairs --workdir=gs://b/t2i_256_1B
  python -m mdd.main --config=configs/t2i.py:res=512,variant=XL,source=tfds \
      --config.data.tfds_name=my_dataset --workdir=/ckpt/t2i_512_XL
  python -m mdd.main --config=configs/t2i.py:res=256,variant=B,text=t5 \
      --config.text.path=/models/t5-v1_1-xl --workdir=...

Args (comma list): res=256|512|1024, variant=mu|S|B|L|XL|1B|3B,
source=arrayrecord|folder|tfds|shapes, text=minilm|t5|byte, vocab=14|18, runlocal (64 px, tiny
models, a few steps of every stage on a CPU; on ShapeGen unless a source is given:
`python -m mdd.main --config=configs/t2i.py:runlocal --workdir=/tmp/t2i`).
The eval stage writes GenEval and DPG-Bench layouts and FID: their files are checked before
anything trains (or leave the stage out: `--config.pipeline_stages=train_tokenizer,pretokenize,
train,sample`).
"""

from configs import common
from mdd import defaults

# Per resolution: batch, denoiser steps, masking shift (more tokens -> mask more, LaViDa-O),
# sampler steps.
_RES = {
    256: dict(batch_size=256, num_steps=400_000, shift=3.0, sampler_steps=32),
    512: dict(batch_size=128, num_steps=300_000, shift=5.0, sampler_steps=48),
    1024: dict(batch_size=64, num_steps=200_000, shift=5.0, sampler_steps=64),
}
_LARGE = ("L", "XL", "1B", "3B")
_SOURCES = ("arrayrecord", "folder", "tfds", "shapes")


def get_config(arg=None):
  args = common.parse_arg(arg, config_name="t2i", res=256, variant="B", source="",
                          text="minilm", vocab=14, runlocal=False)
  res, variant, source, text_kind = args.res, args.variant, args.source, args.text
  vocab_bits, runlocal = args.vocab, args.runlocal
  if res not in _RES:
    raise ValueError(f"configs/t2i.py: res={res} is not one of {sorted(_RES)}")
  source = source or ("shapes" if runlocal else "folder")
  if source not in _SOURCES:
    raise ValueError(f"configs/t2i.py: source={source!r} is not one of {', '.join(_SOURCES)}")
  if vocab_bits not in (14, 18):
    raise ValueError(f"configs/t2i.py: vocab={vocab_bits} is not 14 or 18")
  setting = _RES[res]

  c = defaults.base_config()
  # Large variants shard weights over all devices (FSDP); small ones replicate (data parallel).
  fsdp_first = variant in _LARGE
  c.mesh = defaults.mesh_config(data=1 if fsdp_first else -1, fsdp=-1 if fsdp_first else 1)

  c.data.source = source
  c.data.resolution = res
  c.data.max_text_len = 256  # bytes; the text encoders below cut at their own token limit
  c.data.num_threads = 16
  c.data.validation_fraction = 0.005

  c.tokenizer = defaults.tokenizer_config("B" if vocab_bits == 14 else "B_v18")

  c.denoiser.variant = variant
  c.denoiser.remat = variant in _LARGE
  c.text.kind = text_kind
  c.text.max_len = 77 if text_kind != "byte" else c.data.max_text_len
  c.masking.schedule = "shifted"
  c.masking.shift = setting["shift"]
  c.masking.edit_fraction = 0.1
  c.masking.edit_uniform_share = 0.3
  c.loss.type = "gce"
  c.loss.impl = "auto"  # the fused Pallas kernel on GPU / TPU
  c.loss.ce_mix = 0.1
  t = c.denoiser_train
  t.batch_size = setting["batch_size"]
  t.num_steps = setting["num_steps"]
  t.optim.lr = 3e-4 if variant not in _LARGE else 1.5e-4
  t.optim.warmup_steps = 5000
  t.optim.weight_decay = 0.05
  t.ema_decay = 0.9999
  t.log_every = 100
  t.ckpt_every = 5000
  t.eval_every = 20_000
  t.keep_checkpoints = 3
  t.eval_batches = 16

  c.sampler.num_steps = setting["sampler_steps"]
  c.sampler.schedule = "shifted"
  c.sampler.schedule_shift = setting["shift"]
  c.eval.evals = ("geneval", "dpg", "fid")

  if runlocal:
    c.mesh.data, c.mesh.fsdp = -1, 1
    c.data.resolution = 64
    c.data.train_size, c.data.validation_size, c.data.heldout_size = 512, 128, 128
    c.data.num_threads = 0
    c.tokenizer = defaults.tokenizer_config("tiny")
    c.tokenizer.num_steps = 5
    c.denoiser.variant = "mu"
    c.denoiser.remat = False
    c.denoiser.dtype = "float32"
    c.text.kind = "byte"
    c.text.max_len = 64
    c.data.max_text_len = 64
    t.batch_size, t.num_steps, t.eval_batches = 8, 5, 1
    t.optim.warmup_steps = 1
    t.log_every, t.ckpt_every, t.eval_every = 1, 5, 0
    c.sampler.num_steps = 4
    c.tokenizer.eval.num_examples = 64
    if source == "shapes":
      c.eval.evals = ("shapes_geneval",)
      c.eval.shapes_geneval.images_per_prompt = 1
    else:  # FID of held-out captions' samples against the same held-out images.
      c.eval.evals = ("fid",)
      c.eval.fid.ref_stats = "dataset"
      c.eval.fid.num_samples, c.eval.fid.batch_size = 16, 8
  return c

