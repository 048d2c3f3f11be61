"""Analytic model FLOPs of the denoiser and the trainable text encoders (for MFU).

Counts the matrix products only (2 FLOPs per multiply-add), attention's score and value
products included; norms, activations, RoPE and the optimizer are left out, as in the usual
MFU convention. One training step is 3x the forward (the backward does two products per
forward product); recomputation (remat) is not counted, so the figure is model FLOPs, not
hardware FLOPs. `tests/test_flops.py` checks the forward against XLA's own count.
"""

from __future__ import annotations

from mdd.models import denoiser as denoiser_lib


def block_forward_flops(tokens: int, width: int, mlp_dim: int, *,
                        context_tokens: int = 0) -> int:
  """One pre-norm block over `tokens` positions of width D, per sample: self-attention
  (q, k, v, o projections, scores, values), cross-attention to `context_tokens` keys of width D
  (0 = none) and a SwiGLU MLP (three D x M products)."""
  d = width
  flops = 2 * tokens * 4 * d * d + 2 * 2 * tokens * tokens * d  # self-attention
  if context_tokens:
    flops += 2 * tokens * 2 * d * d                 # q and o projections of the image tokens
    flops += 2 * context_tokens * 2 * d * d         # k and v projections of the context
    flops += 2 * 2 * tokens * context_tokens * d    # scores and values
  flops += 2 * tokens * 3 * d * mlp_dim             # SwiGLU
  return flops


def denoiser_forward_flops(model: denoiser_lib.Denoiser, grid: tuple[int, int], text_len: int,
                           text_dim: int) -> int:
  """Forward FLOPs per sample of `model` on an h x w token grid with `text_len` text tokens of
  width `text_dim` (the null-text token is appended, as the model does); logits included."""
  h, w = grid
  tokens = h * w
  p = model.patch_size
  positions = tokens // (p * p)
  d = model.width
  flops = 2 * (256 * d + d * d)                     # mask-ratio conditioning MLP
  flops += 2 * text_len * text_dim * d              # text projection
  if p > 1:
    flops += 2 * positions * (p * p * d) * d * 2    # patch in and out
  flops += model.depth * block_forward_flops(positions, d, model.mlp_dim,
                                             context_tokens=text_len + 1)
  flops += 2 * tokens * d * model.vocab_size        # head (the logits the loss reads)
  return flops


def text_encoder_forward_flops(encoder, text_len: int) -> int:
  """Forward FLOPs per prompt of a trainable text encoder (its blocks; embedding = gather)."""
  return encoder.depth * block_forward_flops(text_len, encoder.width, encoder.mlp_dim)


def train_step_flops(system, batch: int, grid: tuple[int, int], text_len: int) -> int:
  """Model FLOPs of one training step of a `DenoiserSystem`: 3x the forward of the denoiser
  and of a trainable text encoder, plus one gradient-free forward when the edit source is the
  model's own draft."""
  denoiser = denoiser_forward_flops(system.denoiser, grid, text_len, system.text_dim)
  text = text_encoder_forward_flops(system.text_encoder, text_len) if system.trainable_text else 0
  flops = 3 * (denoiser + text)
  if system.masking.edit_source == "draft":
    flops += denoiser
  return batch * flops
