"""VQGAN-style image tokenizer: conv encoder -> quantizer -> conv decoder, and its loaders.

The encoder/decoder are ResNet stacks with GroupNorm and an optional self-attention block at
the lowest resolution; each level but the last halves (encoder) or doubles (decoder) the
resolution, so `len(channels) - 1` levels give the downsampling factor f = 2^(levels-1).
Size variants live in one table (`VARIANTS`), picked by name.

Public API (what the rest of mdd uses):
  tokenizer.encode(images uint8 or float [-1, 1] [B, H, W, 3]) -> ids int32 [B, H/f, W/f]
  tokenizer.decode(ids) -> float images [-1, 1] (unclipped) [B, H, W, 3]
  tokenizer.codebook() -> [V, d]
  tokenizer_from_config(cfg) -> Tokenizer      # cfg: the `tokenizer` config section
(Linen methods are called as `model.apply({"params": p}, x, method="encode")`.)

Weights carry logical axis names `conv_in` / `conv_out` (kernels) and `codebook`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdd.models import quantizers

Array = jax.Array

# Size variants: width of the first level, per-level width multipliers (truncated to the number
# of levels the downsampling factor needs: f=4 -> 3, f=8 -> 4, f=16 -> 5), ResNet blocks per
# level, width at the quantizer, attention at the lowest resolution.
VARIANTS: dict[str, dict[str, Any]] = {
    "micro": dict(width=8, multipliers=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=16,
                  attention=False),
    "tiny": dict(width=32, multipliers=(1, 2, 2, 4, 4), num_res_blocks=1, z_channels=64,
                 attention=False),
    "S": dict(width=64, multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
              attention=True),
    "B": dict(width=128, multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
              attention=True),
    "L": dict(width=128, multipliers=(1, 2, 2, 4, 4), num_res_blocks=3, z_channels=512,
              attention=True),
}


def variant_channels(variant: str, downsample_factor: int) -> tuple[int, ...]:
  """Per-level widths of `variant` for downsampling factor 4, 8 or 16."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown tokenizer variant {variant!r}; known: {sorted(VARIANTS)}")
  if downsample_factor not in (2, 4, 8, 16):
    raise ValueError(f"downsample_factor must be 2, 4, 8 or 16, got {downsample_factor}")
  levels = int(math.log2(downsample_factor)) + 1
  spec = VARIANTS[variant]
  return tuple(spec["width"] * m for m in spec["multipliers"][:levels])


# ---------------------------------------------------------------------------------------------
# Small layers (kept here: mdd/models/layers.py belongs to the denoiser).


def _num_groups(channels: int) -> int:
  """Up to 32 GroupNorm groups, at least 2 channels per group when possible, dividing C."""
  for groups in range(min(32, max(1, channels // 2)), 0, -1):
    if channels % groups == 0:
      return groups
  return 1


def _norm(channels: int, name: str | None = None, dtype: Any = jnp.float32) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=_num_groups(channels), dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def _conv(features: int, kernel: int = 3, strides: int = 1, name: str | None = None,
          dtype: Any = jnp.float32, zero_init: bool = False) -> nn.Conv:
  init = nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides), padding="SAME", dtype=dtype,
      name=name,
      kernel_init=nn.with_logical_partitioning(init, (None, None, "conv_in", "conv_out")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


class ResBlock(nn.Module):
  """GroupNorm-swish-conv twice plus a (1x1-projected when widths differ) skip."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = _conv(self.features, dtype=self.dtype, name="conv1")(
        nn.swish(_norm(x.shape[-1], "norm1", self.dtype)(x)))
    # The second conv starts at zero, so every block starts as the identity: deep stacks then
    # train fast from step 0 (important for the minutes-long CPU budget).
    h = _conv(self.features, dtype=self.dtype, name="conv2", zero_init=True)(
        nn.swish(_norm(self.features, "norm2", self.dtype)(h)))
    if x.shape[-1] != self.features:
      x = _conv(self.features, kernel=1, dtype=self.dtype, name="skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Single-head self-attention over all positions of a feature map, residual."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    batch, height, width, channels = x.shape
    h = _norm(channels, "norm", self.dtype)(x).reshape(batch, height * width, channels)
    q, k, v = (_conv(channels, kernel=1, dtype=self.dtype, name=n)(h[:, None])[:, 0]
               for n in ("query", "key", "value"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(channels)
    out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    out = _conv(channels, kernel=1, dtype=self.dtype, name="proj", zero_init=True)(out[:, None])
    return x + out[:, 0].reshape(batch, height, width, channels)


class Encoder(nn.Module):
  """Images [B, H, W, 3] -> features [B, H/f, W/f, z_channels]."""
  channels: Sequence[int]
  num_res_blocks: int
  z_channels: int
  attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = _conv(self.channels[0], dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
    for level, features in enumerate(self.channels):
      for block in range(self.num_res_blocks):
        h = ResBlock(features, self.dtype, name=f"down{level}_block{block}")(h)
      if level < len(self.channels) - 1:
        h = _conv(features, strides=2, dtype=self.dtype, name=f"down{level}_downsample")(h)
    h = ResBlock(self.channels[-1], self.dtype, name="mid_block1")(h)
    if self.attention:
      h = AttentionBlock(self.dtype, name="mid_attention")(h)
    h = ResBlock(self.channels[-1], self.dtype, name="mid_block2")(h)
    h = nn.swish(_norm(self.channels[-1], "norm_out", self.dtype)(h))
    return _conv(self.z_channels, dtype=self.dtype, name="conv_out")(h)


class PatchEncoder(nn.Module):
  """Images [B, H, W, 3] -> features [B, H/f, W/f, z_channels], each from its own f x f patch.

  A stride-f patchify followed by per-position residual MLPs with LayerNorm (no GroupNorm, no
  spatial kernels), so a token depends on its patch alone: identical patches get identical
  codes wherever they are (flat backgrounds are one code, not one per neighbourhood), which
  makes the token grid far easier to model at small scale. The decoder stays convolutional.
  """
  patch: int
  width: int
  depth: int
  z_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    # Kernel = stride = f on a size divisible by f: "SAME" adds no padding, patches never mix.
    h = _conv(self.width, kernel=self.patch, strides=self.patch, dtype=self.dtype,
              name="patchify")(x.astype(self.dtype))
    for i in range(self.depth):
      y = _layer_norm(f"block{i}_norm", self.dtype)(h)
      y = _conv(2 * self.width, kernel=1, dtype=self.dtype, name=f"block{i}_in")(y)
      y = _conv(self.width, kernel=1, dtype=self.dtype, name=f"block{i}_out",
                zero_init=True)(nn.swish(y))
      h = h + y
    h = nn.swish(_layer_norm("norm_out", self.dtype)(h))
    return _conv(self.z_channels, kernel=1, dtype=self.dtype, name="conv_out")(h)


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(
      dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


class Decoder(nn.Module):
  """Features [B, h, w, z_channels] -> images [B, h*f, w*f, 3] (float, about [-1, 1])."""
  channels: Sequence[int]
  num_res_blocks: int
  attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, Array]:
    """Returns (images, features) where features are the input of the last conv `conv_out`
    (the GAN's adaptive weight differentiates through that conv alone)."""
    top = self.channels[-1]
    h = _conv(top, dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
    h = ResBlock(top, self.dtype, name="mid_block1")(h)
    if self.attention:
      h = AttentionBlock(self.dtype, name="mid_attention")(h)
    h = ResBlock(top, self.dtype, name="mid_block2")(h)
    for level in reversed(range(len(self.channels))):
      for block in range(self.num_res_blocks + 1):
        h = ResBlock(self.channels[level], self.dtype, name=f"up{level}_block{block}")(h)
      if level > 0:
        h = upsample_nearest_2x(h)
        h = _conv(self.channels[level], dtype=self.dtype, name=f"up{level}_upsample")(h)
    features = nn.swish(_norm(self.channels[0], "norm_out", self.dtype)(h))
    images = _conv(3, dtype=self.dtype, name="conv_out")(features).astype(jnp.float32)
    return images, features


def upsample_nearest_2x(x: Array) -> Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2 (= `jax.image.resize` "nearest").

  A broadcast + reshape, so the gradient is a sum over each 2x2 block: `jax.image.resize`
  gathers, and its gradient is a bfloat16 scatter-add that took 88% of the H200's time in the
  GPU tokenizer step (docs/benchmarks.md).
  """
  batch, height, width, channels = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
  return x.reshape(batch, 2 * height, 2 * width, channels)


# ---------------------------------------------------------------------------------------------
# The tokenizer.


def images_to_float(images: Array) -> Array:
  """uint8 [0, 255] -> float32 [-1, 1]; float input is taken to be in [-1, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


class Tokenizer(nn.Module):
  """Conv encoder, VQ or FSQ quantizer, conv decoder.

  Attributes:
    channels: per-level widths; f = 2^(len(channels) - 1).
    num_res_blocks: ResNet blocks per level (the decoder uses one more, as VQGAN).
    z_channels: width of the encoder output / decoder input.
    attention: self-attention at the lowest resolution.
    encoder_kind: "conv" (the VQGAN ResNet stack) or "patch" (`PatchEncoder`: each token sees only
      its own f x f patch; `channels[-1]` wide, `patch_depth` residual MLPs).
    patch_depth: residual MLP blocks of the patch encoder.
    quantizer: "vq" or "fsq".
    vocab_size: VQ codebook size (ignored by FSQ, whose size is prod(fsq_levels)).
    code_dim: VQ code dimension.
    fsq_levels: FSQ levels per dimension.
    commitment_cost, codebook_cost, lookup_block_size, entropy_weight, entropy_temperature:
      passed to `VectorQuantizer`.
    dtype: compute dtype (params stay float32).
  """
  channels: Sequence[int]
  num_res_blocks: int = 1
  z_channels: int = 64
  attention: bool = False
  encoder_kind: str = "conv"
  patch_depth: int = 2
  quantizer: str = "vq"
  vocab_size: int = 1024
  code_dim: int = 8
  fsq_levels: Sequence[int] = (8, 8, 8, 5, 5, 5)
  commitment_cost: float = 0.25
  codebook_cost: float = 1.0
  lookup_block_size: int = 4096
  entropy_weight: float = 0.0
  entropy_temperature: float = 0.01
  dtype: Any = jnp.float32

  def setup(self):
    if len(self.channels) < 2:
      raise ValueError(f"Tokenizer: need at least 2 levels of channels, got {self.channels}")
    if self.encoder_kind == "conv":
      self.encoder = Encoder(self.channels, self.num_res_blocks, self.z_channels,
                             self.attention, self.dtype)
    elif self.encoder_kind == "patch":
      self.encoder = PatchEncoder(self.downsample_factor, self.channels[-1],
                                  self.patch_depth, self.z_channels, self.dtype)
    else:
      raise ValueError(
          f"Tokenizer: encoder must be 'conv' or 'patch', got {self.encoder_kind!r}")
    if self.quantizer == "vq":
      self.quant = quantizers.VectorQuantizer(
          vocab_size=self.vocab_size, code_dim=self.code_dim, out_features=self.z_channels,
          commitment_cost=self.commitment_cost, codebook_cost=self.codebook_cost,
          lookup_block_size=self.lookup_block_size, entropy_weight=self.entropy_weight,
          entropy_temperature=self.entropy_temperature, dtype=self.dtype)
    elif self.quantizer == "fsq":
      self.quant = quantizers.FiniteScalarQuantizer(tuple(self.fsq_levels), self.z_channels,
                                                    self.dtype)
    else:
      raise ValueError(f"Tokenizer: quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
    self.decoder = Decoder(self.channels, self.num_res_blocks, self.attention, self.dtype)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channels) - 1)

  @property
  def num_codes(self) -> int:
    """V: the number of distinct ids (VQ codebook size or FSQ lattice size)."""
    if self.quantizer == "fsq":
      return int(math.prod(int(level) for level in self.fsq_levels))
    return int(self.vocab_size)

  def _check_images(self, images: Array):
    f = self.downsample_factor
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Tokenizer: images must be [B, H, W, 3], got {images.shape}")
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"Tokenizer: image size {images.shape[1]}x{images.shape[2]} is not "
                       f"divisible by the downsampling factor {f}")

  def __call__(self, images: Array) -> tuple[Array, dict[str, Array]]:
    """Reconstructs images through the quantizer (straight-through).

    Returns (reconstruction float [B, H, W, 3], aux) with aux from the quantizer (`ids`,
    `encodings`, `loss`, ...) plus `decoder_features` (input of the decoder's last conv).
    """
    self._check_images(images)
    quantized, aux = self.quant(self.encoder(images_to_float(images)))
    reconstruction, features = self.decoder(quantized)
    return reconstruction, dict(aux, decoder_features=features)

  def encode(self, images: Array) -> Array:
    """images uint8 or float [-1, 1] [B, H, W, 3] -> ids int32 [B, H/f, W/f]."""
    self._check_images(images)
    return self.quant.encode(self.encoder(images_to_float(images)))

  def decode(self, ids: Array) -> Array:
    """ids int32 [B, h, w] -> float images [B, h*f, w*f, 3] in about [-1, 1] (not clipped)."""
    if ids.ndim != 3:
      raise ValueError(f"Tokenizer.decode: ids must be [B, h, w], got {ids.shape}")
    return self.decoder(self.quant.embed(ids.astype(jnp.int32)))[0]

  def codebook(self) -> Array:
    """Code embeddings [V, d] in the space the neighbour tables measure distances in."""
    return self.quant.codebook()


def tokenizer_from_config(cfg) -> Tokenizer:
  """Builds the tokenizer from the `tokenizer` config section (its `model` sub-section)."""
  model = cfg.model if "model" in cfg else cfg
  channels = variant_channels(model.variant, int(model.downsample_factor))
  spec = VARIANTS[model.variant]
  attention = spec["attention"] if model.get("attention") is None else bool(model.attention)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(model.get("dtype", "float32"))
  if dtype is None:
    raise ValueError(f"tokenizer.model.dtype must be float32 or bfloat16, got {model.dtype!r}")
  return Tokenizer(
      channels=channels, num_res_blocks=int(spec["num_res_blocks"]),
      z_channels=int(spec["z_channels"]), attention=attention,
      encoder_kind=str(model.get("encoder", "conv")),
      patch_depth=int(model.get("patch_depth", 2)),
      quantizer=model.quantizer, vocab_size=int(model.vocab_size), code_dim=int(model.code_dim),
      fsq_levels=tuple(int(v) for v in model.fsq_levels),
      commitment_cost=float(model.commitment_cost), codebook_cost=float(model.codebook_cost),
      lookup_block_size=int(model.lookup_block_size),
      entropy_weight=float(model.entropy_weight),
      entropy_temperature=float(model.entropy_temperature), dtype=dtype)
