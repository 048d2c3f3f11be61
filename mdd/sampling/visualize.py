"""Pictures of samples: image grids (PNG) and unmask-and-edit trajectories (GIF), with PIL.

A trajectory frame shows every sample of the batch after one sampler step: masked tokens as a
grey checkerboard (distinct from a flat grey background), tokens edited at that step outlined in
magenta. Tokens are turned into pixels by the caller's tokenizer closure
  decode_fn(tokens int [B, h, w]) -> uint8 images [B, h f, w f, C]
which never sees the mask id (masked positions are decoded as `fill_token`, then painted over).
"""

import io
from typing import Callable, Optional

import numpy as np
from PIL import Image

from mdd.utils import fileio

DecodeFn = Callable[[np.ndarray], np.ndarray]

MASK_DARK = (96, 96, 96)
MASK_LIGHT = (150, 150, 150)
EDIT_COLOUR = (255, 0, 255)


def _as_rgb_uint8(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 3:  # [N, H, W] greyscale
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 3] (or greyscale), got shape {images.shape}")
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {images.dtype}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def image_grid(images, columns: Optional[int] = None, padding: int = 2,
               pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images [N, H, W, 3] row by row into one [rows (H+p) + p, cols (W+p) + p, 3]."""
  images = _as_rgb_uint8(images)
  count, height, width, _ = images.shape
  if count == 0:
    raise ValueError("image_grid needs at least one image")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  columns = columns or int(np.ceil(np.sqrt(count)))
  if columns < 1:
    raise ValueError(f"columns must be >= 1, got {columns}")
  rows = int(np.ceil(count / columns))
  grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, 3),
                 pad_value, np.uint8)
  for index, image in enumerate(images):
    top = padding + (index // columns) * (height + padding)
    left = padding + (index % columns) * (width + padding)
    grid[top:top + height, left:left + width] = image
  return grid


def save_png(path: str, image) -> None:
  """Writes a uint8 [H, W, 3] image as PNG (whole or not at all; local or remote, `fileio`)."""
  image = _as_rgb_uint8(np.asarray(image)[None])[0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  fileio.write_bytes_atomic(path, buffer.getvalue())


def save_image_grid(path: str, images, columns: Optional[int] = None, padding: int = 2) -> None:
  save_png(path, image_grid(images, columns, padding))


def _upscale(array: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of the two axes after the leading one."""
  return np.repeat(np.repeat(array, scale, axis=1), scale, axis=2)


def decorate_step(images: np.ndarray, masked: np.ndarray, edited: Optional[np.ndarray],
                  patch: int) -> np.ndarray:
  """Paints masked token patches as a checkerboard and outlines edited ones.

  images uint8 [B, H, W, 3]; masked / edited bool [B, h, w]; `patch` pixels per token side.
  """
  images = images.copy()
  batch, height, width, _ = images.shape
  pixel_masked = _upscale(masked, patch)
  yy, xx = np.mgrid[0:height, 0:width]
  cell = max(1, patch // 4)  # checker squares: a quarter of a token, at least one pixel
  checker = np.where(((yy // cell + xx // cell) % 2 == 0)[..., None], MASK_DARK, MASK_LIGHT)
  images[pixel_masked] = np.broadcast_to(checker, (batch, height, width, 3))[pixel_masked]
  if edited is not None and edited.any():
    thickness = max(1, patch // 8)
    border = np.zeros((patch, patch), bool)
    border[:thickness] = border[-thickness:] = True
    border[:, :thickness] = border[:, -thickness:] = True
    outline = _upscale(edited, patch) & np.tile(border, (height // patch, width // patch))[None]
    images[outline] = EDIT_COLOUR
  return images


def trajectory_frames(trajectory_tokens, decode_fn: DecodeFn, mask_id: int,
                      edited=None, *, initial_tokens=None, fill_token: int = 0, scale: int = 1,
                      columns: Optional[int] = None, padding: int = 2) -> np.ndarray:
  """uint8 [S (+1), H', W', 3]: one image grid of the batch per sampler step.

  Args:
    trajectory_tokens: int [S, B, h, w] tokens after each step (the sampler's trajectory).
    decode_fn: tokens [B, h, w] -> uint8 [B, h f, w f, C].
    mask_id: id of masked positions.
    edited: optional bool [S, B, h, w], positions edited at each step (outlined).
    initial_tokens: optional int [B, h, w], shown as a first frame (the sampler's input).
    fill_token: a valid token decoded at masked positions before they are painted over.
    scale: integer nearest-neighbour upscaling (tiny images are hard to see).
  """
  steps = np.asarray(trajectory_tokens)
  if steps.ndim != 4:
    raise ValueError(f"trajectory_tokens must be [S, B, h, w], got shape {steps.shape}")
  if edited is not None:
    edited = np.asarray(edited, bool)
    if edited.shape != steps.shape:
      raise ValueError(f"edited {edited.shape} does not match trajectory_tokens {steps.shape}")
  if scale < 1:
    raise ValueError(f"scale must be >= 1, got {scale}")
  if initial_tokens is not None:
    initial = np.asarray(initial_tokens)[None]
    if initial.shape[1:] != steps.shape[1:]:
      raise ValueError(f"initial_tokens {initial.shape[1:]} does not match {steps.shape[1:]}")
    steps = np.concatenate([initial, steps])
    if edited is not None:
      edited = np.concatenate([np.zeros_like(edited[:1]), edited])
  frames = []
  for index, tokens in enumerate(steps):
    masked = tokens == mask_id
    images = _as_rgb_uint8(np.asarray(decode_fn(np.where(masked, fill_token, tokens))))
    if images.shape[0] != tokens.shape[0] or images.shape[1] % tokens.shape[1]:
      raise ValueError(f"decode_fn returned {images.shape} for tokens {tokens.shape}")
    patch = images.shape[1] // tokens.shape[1]
    if images.shape[2] != patch * tokens.shape[2]:
      raise ValueError(f"decode_fn returned {images.shape}: not a whole number of pixels per "
                       f"token for tokens {tokens.shape}")
    images = _upscale(images, scale)
    step_edited = None if edited is None else edited[index]
    frames.append(image_grid(decorate_step(images, masked, step_edited, patch * scale),
                             columns, padding))
  return np.stack(frames)


def save_gif(path: str, frames, frame_ms: int = 150, final_hold_ms: int = 1500) -> None:
  """Writes uint8 frames [S, H, W, 3] as a looping GIF; the last frame is held longer."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise ValueError(f"frames must be a non-empty [S, H, W, 3] array, got {frames.shape}")
  pictures = [Image.fromarray(frame) for frame in _as_rgb_uint8(frames)]
  durations = [frame_ms] * (len(pictures) - 1) + [final_hold_ms]
  buffer = io.BytesIO()
  pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                   duration=durations, loop=0)
  fileio.write_bytes_atomic(path, buffer.getvalue())


def save_trajectory_gif(path: str, trajectory, decode_fn: DecodeFn, mask_id: int, *,
                        initial_tokens=None, scale: int = 1, columns: Optional[int] = None,
                        frame_ms: int = 150) -> np.ndarray:
  """GIF of a sampler `Trajectory` (fields `tokens`, `edited`, [S, B, h, w]); returns frames."""
  frames = trajectory_frames(trajectory.tokens, decode_fn, mask_id, trajectory.edited,
                             initial_tokens=initial_tokens, scale=scale, columns=columns)
  save_gif(path, frames, frame_ms=frame_ms)
  return frames
