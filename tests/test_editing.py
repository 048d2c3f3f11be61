"""Tests of the inpainting / outpainting helpers (`mdd.sampling.editing`) with a toy patch tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdd import sampling as sampler
from mdd.sampling import editing

FACTOR = 4
VOCAB = 8
MASK = VOCAB


def encode_fn(images):
  """Toy tokenizer: each 4x4 patch -> its mean red value in 8 levels."""
  images = np.asarray(images, np.float32)
  b, h, w, _ = images.shape
  patches = images[..., 0].reshape(b, h // FACTOR, FACTOR, w // FACTOR, FACTOR)
  return np.minimum(patches.mean((2, 4)) // 32, VOCAB - 1).astype(np.int32)


def decode_fn(tokens):
  tokens = np.asarray(tokens)
  assert not np.any(tokens >= VOCAB), "decode_fn must never see the mask id"
  values = (tokens * 32 + 16).astype(np.uint8)
  pixels = np.repeat(np.repeat(values, FACTOR, axis=1), FACTOR, axis=2)
  return np.stack([pixels, 255 - pixels, pixels // 2], axis=-1)


def _images(batch=2, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


def test_pixel_mask_to_token_mask_against_loops():
  rng = np.random.default_rng(1)
  pixel_mask = rng.random((3, 12, 16)) < 0.15
  for min_coverage in (0.0, 0.25, 0.5):
    tokens = np.asarray(editing.pixel_mask_to_token_mask(pixel_mask, FACTOR, min_coverage))
    assert tokens.shape == (3, 3, 4)
    for b in range(3):
      for i in range(3):
        for j in range(4):
          patch = pixel_mask[b, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4]
          assert tokens[b, i, j] == (patch.mean() > min_coverage)
  with pytest.raises(ValueError, match="multiple"):
    editing.pixel_mask_to_token_mask(np.zeros((10, 16), bool), FACTOR)


def test_box_to_token_mask():
  pixel_mask = editing.box_to_pixel_mask((5, 3, 11, 14), 16, 16)
  assert pixel_mask.sum() == 6 * 11 and pixel_mask[5, 3] and not pixel_mask[11, 3]
  tokens = np.asarray(editing.pixel_mask_to_token_mask(pixel_mask, FACTOR))
  expected = np.zeros((4, 4), bool)
  expected[1:3, 0:4] = True  # rows of pixels 4..11, columns of pixels 0..15
  np.testing.assert_array_equal(tokens, expected)
  np.testing.assert_array_equal(editing.token_mask_to_pixel_mask(tokens, FACTOR)[5:11, 3:14],
                                True)
  with pytest.raises(ValueError, match="outside"):
    editing.box_to_pixel_mask((0, 0, 17, 4), 16, 16)


def test_prepare_inpainting_masks_the_region_and_fixes_the_rest():
  images = _images()
  pixel_mask = editing.box_to_pixel_mask((4, 4, 9, 12), 16, 16)
  setup = editing.prepare_inpainting(images, pixel_mask, encode_fn, FACTOR, MASK)
  original = encode_fn(images)
  region = np.asarray(setup.token_mask)
  assert region.shape == (2, 4, 4) and region[:, 1:3, 1:3].all() and region.sum() == 2 * 4
  np.testing.assert_array_equal(np.asarray(setup.tokens)[region], MASK)
  np.testing.assert_array_equal(np.asarray(setup.tokens)[~region], original[~region])
  np.testing.assert_array_equal(setup.fixed, ~region)
  assert np.asarray(setup.pixel_mask)[:, pixel_mask].all()  # covers every masked pixel

  revised = editing.prepare_inpainting(images, pixel_mask, encode_fn, FACTOR, MASK, revise=True)
  np.testing.assert_array_equal(revised.tokens, original)  # visible but editable
  np.testing.assert_array_equal(revised.fixed, ~region)


def test_inpainting_with_the_sampler_keeps_the_outside():
  images = _images(seed=2)
  pixel_mask = editing.box_to_pixel_mask((0, 8, 8, 16), 16, 16)
  setup = editing.prepare_inpainting(images, pixel_mask, encode_fn, FACTOR, MASK)

  def logits_fn(context, tokens, info):
    # Confidently prefers (token + 3) everywhere, so edits would fire wherever allowed.
    del info
    return 6.0 * jax.nn.one_hot((jnp.where(tokens == MASK, 0, tokens) + 3) % VOCAB, VOCAB) + context

  config = sampler.SamplerConfig(mask_id=MASK, num_steps=3, edit_threshold=0.5,
                                 edit_max_fraction=1.0, num_edit_passes=2)
  context = jnp.asarray(np.random.default_rng(3).normal(size=(16, VOCAB)), jnp.float32)
  out = sampler.sample(logits_fn, jax.random.key(0), setup.tokens, config, context=context,
                       fixed=setup.fixed)
  tokens = np.asarray(out.tokens)
  region = np.asarray(setup.token_mask)
  np.testing.assert_array_equal(tokens[~region], encode_fn(images)[~region])
  assert not np.any(tokens == MASK)
  assert int(out.stats["num_edited"].sum()) > 0  # edits did fire, inside the region only
  edited = np.asarray(editing.finish_edit(out.tokens, decode_fn, setup))
  inside = np.asarray(setup.pixel_mask)
  np.testing.assert_array_equal(edited[~inside], images[~inside])  # exact original pixels
  np.testing.assert_array_equal(edited[inside], decode_fn(tokens)[inside])
  plain = np.asarray(editing.finish_edit(out.tokens, decode_fn, setup,
                                         keep_original_pixels=False))
  np.testing.assert_array_equal(plain, decode_fn(tokens))


def test_prepare_outpainting_extends_the_canvas():
  images = _images(seed=4)
  setup = editing.prepare_outpainting(images, (4, 0, 8, 4), encode_fn, FACTOR, MASK)
  tokens = np.asarray(setup.tokens)
  assert tokens.shape == (2, 5, 7)
  np.testing.assert_array_equal(tokens[:, 1:, 2:6], encode_fn(images))
  assert np.all(tokens[:, 0] == MASK) and np.all(tokens[:, :, :2] == MASK)
  assert np.all(tokens[:, :, 6] == MASK)
  np.testing.assert_array_equal(setup.fixed, tokens != MASK)
  np.testing.assert_array_equal(setup.token_mask, tokens == MASK)
  assert setup.images.shape == (2, 20, 28, 3) and setup.pixel_mask.shape == (2, 20, 28)
  np.testing.assert_array_equal(np.asarray(setup.images)[:, 4:, 8:24], images)
  assert not np.asarray(setup.pixel_mask)[:, 4:, 8:24].any()
  assert np.asarray(setup.pixel_mask)[:, :4].all()
  with pytest.raises(ValueError, match="multiples"):
    editing.prepare_outpainting(images, (2, 0, 0, 0), encode_fn, FACTOR, MASK)


def test_outpainting_canvas_and_bad_inputs():
  tokens = np.random.default_rng(5).integers(0, VOCAB, size=(1, 2, 3))
  canvas, fixed = editing.outpainting_canvas(tokens, (1, 2, 0, 1), MASK)
  assert canvas.shape == (1, 5, 4)
  np.testing.assert_array_equal(np.asarray(canvas)[:, 1:3, 0:3], tokens)
  assert np.asarray(fixed).sum() == 6
  with pytest.raises(ValueError, match="pad"):
    editing.outpainting_canvas(tokens, (1, -1, 0, 0), MASK)
  with pytest.raises(ValueError, match="region"):
    editing.inpainting_tokens(tokens, np.ones((3, 3), bool), MASK)
  with pytest.raises(ValueError, match="encode_fn returned"):
    editing.prepare_inpainting(_images(), np.ones((16, 16), bool), encode_fn, 2, MASK)
