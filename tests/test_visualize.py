"""Tests of image grids and trajectory GIFs (`mdd.sampling.visualize`) with a toy decoder."""

import os

import numpy as np
import pytest
from PIL import Image

from mdd.sampling import visualize

FACTOR = 4
VOCAB = 8
MASK = VOCAB


def decode_fn(tokens):
  """Toy decoder: token t -> a flat 4x4 patch of colour (30 t, 200 - 20 t, 10)."""
  tokens = np.asarray(tokens)
  assert not np.any(tokens >= VOCAB), "decode_fn must never see the mask id"
  colours = np.stack([30 * tokens, 200 - 20 * tokens, np.full_like(tokens, 10)], -1)
  return np.repeat(np.repeat(colours, FACTOR, axis=1), FACTOR, axis=2).astype(np.uint8)


def test_image_grid_places_every_image():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
  grid = visualize.image_grid(images, columns=3, padding=2, pad_value=255)
  assert grid.shape == (2 * 8 + 2, 3 * 9 + 2, 3)
  for index, image in enumerate(images):
    top, left = 2 + (index // 3) * 8, 2 + (index % 3) * 9
    np.testing.assert_array_equal(grid[top:top + 6, left:left + 7], image)
  assert np.all(grid[:2] == 255) and np.all(grid[10:, 20:] == 255)  # padding and the empty cell
  with pytest.raises(ValueError, match="uint8"):
    visualize.image_grid(images.astype(np.float32))


def test_save_image_grid_round_trips(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
  path = os.path.join(tmp_path, "grid.png")
  visualize.save_image_grid(path, images, columns=2)
  np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                visualize.image_grid(images, columns=2))


def test_trajectory_frames_paint_masks_and_edits(tmp_path):
  rng = np.random.default_rng(2)
  final = rng.integers(0, VOCAB, size=(2, 3, 3))
  steps = np.stack([np.where(rng.random(final.shape) < p, MASK, final) for p in (0.7, 0.3, 0.0)])
  edited = np.zeros(steps.shape, bool)
  edited[2, 1, 0, 2] = True
  initial = np.full(final.shape, MASK)
  frames = visualize.trajectory_frames(steps, decode_fn, MASK, edited, initial_tokens=initial,
                                       scale=2, columns=2, padding=0)
  assert frames.shape == (4, 3 * 8, 2 * 3 * 8, 3)
  patch = FACTOR * 2
  decoded = [decode_fn(np.where(tokens == MASK, 0, tokens)) for tokens in steps]
  mask_colours = {visualize.MASK_DARK, visualize.MASK_LIGHT}
  for frame, tokens, step_edited, images in zip(frames[1:], steps, edited, decoded):
    for b in range(2):
      for i in range(3):
        for j in range(3):
          tile = frame[i * patch:(i + 1) * patch, b * 24 + j * patch:b * 24 + (j + 1) * patch]
          colours = {tuple(c) for c in tile.reshape(-1, 3)}
          if tokens[b, i, j] == MASK:
            assert colours == mask_colours  # a two-tone checkerboard
          elif step_edited[b, i, j]:
            assert tuple(tile[0, 0]) == visualize.EDIT_COLOUR
            assert tuple(tile[patch // 2, patch // 2]) == tuple(images[b, i * 4, j * 4])
          else:
            assert colours == {tuple(images[b, i * 4, j * 4])}
  assert {tuple(c) for c in frames[0].reshape(-1, 3)} == mask_colours  # the initial frame
  assert not np.any(np.all(frames[:3] == visualize.EDIT_COLOUR, axis=-1))

  path = os.path.join(tmp_path, "trajectory.gif")
  visualize.save_gif(path, frames)
  with Image.open(path) as gif:
    assert gif.n_frames == 4 and gif.size == (48, 24)


def test_trajectory_frames_bad_inputs():
  steps = np.zeros((2, 1, 3, 3), np.int32)
  with pytest.raises(ValueError, match="edited"):
    visualize.trajectory_frames(steps, decode_fn, MASK, np.zeros((2, 1, 3, 2), bool))
  with pytest.raises(ValueError, match="decode_fn returned"):
    visualize.trajectory_frames(steps, lambda t: np.zeros((1, 10, 12, 3), np.uint8), MASK)
  with pytest.raises(ValueError, match=r"\[S, B, h, w\]"):
    visualize.trajectory_frames(steps[0], decode_fn, MASK)
