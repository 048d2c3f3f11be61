"""Image editing without fine-tuning: inpainting and outpainting set-ups for `mdd.sampling.sampler.sample`.

An edit is a token grid with `mask_id` where the model should generate, plus a `fixed` mask of
the user's tokens the sampler must keep. Pixels map to tokens through the tokenizer's
downsampling factor `f` (token (i, j) covers pixels [i f, (i+1) f) x [j f, (j+1) f)).

The tokenizer comes in as closures, so this module does not import it:
  encode_fn(images [B, H, W, C]) -> int tokens [B, H/f, W/f]
  decode_fn(tokens [B, h, w]) -> uint8 images [B, h f, w f, C]

Typical use (the prompt goes into the sampler's `logits_fn` context):
  setup = prepare_inpainting(images, pixel_mask, encode_fn, f, mask_id)
  out = sampler.sample(logits_fn, rng, setup.tokens, config, context=..., fixed=setup.fixed)
  edited = finish_edit(out.tokens, decode_fn, setup)
"""

from typing import Callable, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

EncodeFn = Callable[[jnp.ndarray], jnp.ndarray]
DecodeFn = Callable[[jnp.ndarray], jnp.ndarray]


@flax.struct.dataclass
class EditSetup:
  """Everything the sampler and `finish_edit` need for one batch of edits."""
  tokens: jnp.ndarray      # int32 [B, h, w], mask_id where the model generates
  fixed: jnp.ndarray       # bool [B, h, w], user tokens the sampler keeps
  token_mask: jnp.ndarray  # bool [B, h, w], the token region being (re)generated
  pixel_mask: jnp.ndarray  # bool [B, H, W], pixels taken from the generated image
  images: jnp.ndarray      # [B, H, W, C] the original pixels (placed on the canvas)


def box_to_pixel_mask(box: Sequence[int], height: int, width: int) -> np.ndarray:
  """bool [height, width], True inside `box = (top, left, bottom, right)` (half-open pixels)."""
  if len(box) != 4:
    raise ValueError(f"box must be (top, left, bottom, right), got {box}")
  top, left, bottom, right = (int(v) for v in box)
  if not (0 <= top < bottom <= height and 0 <= left < right <= width):
    raise ValueError(f"box {tuple(box)} is empty or outside the {height}x{width} image")
  mask = np.zeros((height, width), bool)
  mask[top:bottom, left:right] = True
  return mask


def pixel_mask_to_token_mask(pixel_mask, downsample: int, min_coverage: float = 0.0):
  """bool [..., H/f, W/f]: a token is in the region when > `min_coverage` of its patch is.

  The default (0) takes every token touched by the mask, so the whole region is regenerated.
  """
  pixel_mask = jnp.asarray(pixel_mask, bool)
  *lead, height, width = pixel_mask.shape
  if downsample < 1 or height % downsample or width % downsample:
    raise ValueError(f"pixel mask {height}x{width} is not a multiple of the tokenizer's "
                     f"downsampling factor {downsample}")
  if not 0.0 <= min_coverage < 1.0:
    raise ValueError(f"min_coverage must be in [0, 1), got {min_coverage}")
  patches = pixel_mask.reshape(*lead, height // downsample, downsample, width // downsample,
                               downsample)
  coverage = patches.mean(axis=(-3, -1), dtype=jnp.float32)
  return coverage > min_coverage


def token_mask_to_pixel_mask(token_mask, downsample: int):
  """bool [..., h f, w f]: each token's patch repeated to pixels."""
  token_mask = jnp.asarray(token_mask, bool)
  return jnp.repeat(jnp.repeat(token_mask, downsample, axis=-2), downsample, axis=-1)


def inpainting_tokens(tokens, region, mask_id: int, *, revise: bool = False):
  """(tokens, fixed) for regenerating `region` of a token grid.

  Args:
    tokens: int [B, h, w] of the original image.
    region: bool [B, h, w] or [h, w], the tokens to regenerate.
    mask_id: the sampler's mask id.
    revise: keep the region's tokens visible but not fixed instead of masking them, so the
      sampler's editing (edit_threshold, edit passes) revises them; a gentler edit.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 3:
    raise ValueError(f"tokens must be [B, h, w], got shape {tokens.shape}")
  region = jnp.asarray(region, bool)
  if region.shape not in (tokens.shape, tokens.shape[1:]):
    raise ValueError(f"region {region.shape} does not match tokens {tokens.shape}")
  region = jnp.broadcast_to(region, tokens.shape)
  if not revise:
    tokens = jnp.where(region, mask_id, tokens)
  return tokens, ~region


def outpainting_canvas(tokens, pad: Sequence[int], mask_id: int):
  """(canvas, fixed): `tokens` [B, h, w] placed in a larger grid padded with `mask_id`.

  `pad = (top, bottom, left, right)` in tokens, each >= 0.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 3:
    raise ValueError(f"tokens must be [B, h, w], got shape {tokens.shape}")
  if len(pad) != 4 or min(pad) < 0:
    raise ValueError(f"pad must be (top, bottom, left, right) with entries >= 0, got {pad}")
  top, bottom, left, right = (int(p) for p in pad)
  widths = ((0, 0), (top, bottom), (left, right))
  canvas = jnp.pad(tokens, widths, constant_values=mask_id)
  fixed = jnp.pad(jnp.ones(tokens.shape, bool), widths, constant_values=False)
  return canvas, fixed


def prepare_inpainting(images, pixel_mask, encode_fn: EncodeFn, downsample: int, mask_id: int,
                       *, min_coverage: float = 0.0, revise: bool = False) -> EditSetup:
  """Tokenizes `images` [B, H, W, C] and masks the tokens under `pixel_mask` [B or -, H, W]."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  pixel_mask = jnp.broadcast_to(jnp.asarray(pixel_mask, bool), images.shape[:3])
  token_mask = pixel_mask_to_token_mask(pixel_mask, downsample, min_coverage)
  original = _encode(encode_fn, images, token_mask.shape)
  tokens, fixed = inpainting_tokens(original, token_mask, mask_id, revise=revise)
  # Composite on the token patches, which contain every masked pixel (at min_coverage 0).
  return EditSetup(tokens=tokens, fixed=fixed, token_mask=token_mask,
                   pixel_mask=token_mask_to_pixel_mask(token_mask, downsample), images=images)


def prepare_outpainting(images, pad_pixels: Sequence[int], encode_fn: EncodeFn, downsample: int,
                        mask_id: int) -> EditSetup:
  """Extends the canvas by `pad_pixels = (top, bottom, left, right)` (multiples of f)."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
  if len(pad_pixels) != 4 or any(p < 0 or p % downsample for p in pad_pixels):
    raise ValueError(f"pad_pixels {tuple(pad_pixels)} must be 4 non-negative multiples of the "
                     f"downsampling factor {downsample}")
  batch, height, width, _ = images.shape
  if height % downsample or width % downsample:
    raise ValueError(f"image {height}x{width} is not a multiple of the downsampling factor "
                     f"{downsample}")
  original = _encode(encode_fn, images, (batch, height // downsample, width // downsample))
  canvas, fixed = outpainting_canvas(original, [p // downsample for p in pad_pixels], mask_id)
  top, bottom, left, right = pad_pixels
  pixel_widths = ((0, 0), (top, bottom), (left, right))
  return EditSetup(tokens=canvas, fixed=fixed, token_mask=~fixed,
                   pixel_mask=token_mask_to_pixel_mask(~fixed, downsample),
                   images=jnp.pad(images, pixel_widths + ((0, 0),)))


def composite(original, generated, pixel_mask):
  """Generated pixels inside `pixel_mask` [B, H, W], original pixels elsewhere."""
  return jnp.where(jnp.asarray(pixel_mask, bool)[..., None], jnp.asarray(generated),
                   jnp.asarray(original).astype(jnp.asarray(generated).dtype))


def finish_edit(tokens, decode_fn: DecodeFn, setup: EditSetup, *,
                keep_original_pixels: bool = True):
  """Decodes sampled tokens; outside the edited region the original pixels are restored.

  `keep_original_pixels=False` returns the plain decode (the tokenizer's reconstruction of the
  kept region instead of the exact original pixels).
  """
  generated = jnp.asarray(decode_fn(tokens))
  if generated.shape[:3] != setup.pixel_mask.shape:
    raise ValueError(f"decode_fn returned {generated.shape}, expected images of "
                     f"{setup.pixel_mask.shape}")
  if not keep_original_pixels:
    return generated
  return composite(setup.images, generated, setup.pixel_mask)


def _encode(encode_fn: EncodeFn, images, expected_shape: Sequence[int]):
  tokens = jnp.asarray(encode_fn(images))
  if tokens.shape != tuple(expected_shape):
    raise ValueError(f"encode_fn returned tokens {tokens.shape}, expected {tuple(expected_shape)} "
                     "(check the downsampling factor)")
  return tokens.astype(jnp.int32)
