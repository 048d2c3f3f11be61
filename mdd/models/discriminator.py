"""PatchGAN discriminator, hinge losses and the VQGAN adaptive weight.

The discriminator maps images [B, H, W, 3] to a grid of real/fake logits [B, h, w, 1]; each
logit judges one receptive-field patch. It uses GroupNorm instead of BatchNorm so that it has no
mutable batch statistics and behaves the same on any mesh. The generator's GAN term is scaled by
the adaptive weight |grad L_rec| / |grad L_gan| taken at the decoder's last layer (VQGAN), and only
switches on after `start_step`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class PatchDiscriminator(nn.Module):
  """Stride-2 4x4 convs with LeakyReLU, then two stride-1 4x4 convs to one logit per patch.

  Attributes:
    width: channels of the first layer (doubling per layer, at most 8x).
    num_layers: stride-2 layers (each halves the resolution).
    dtype: compute dtype.
  """
  width: int = 64
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    def conv(features, strides, name):
      return nn.Conv(features, (4, 4), strides=(strides, strides), padding="SAME",
                     dtype=self.dtype, name=name,
                     kernel_init=nn.with_logical_partitioning(
                         nn.initializers.normal(0.02), (None, None, "conv_in", "conv_out")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))

    def norm(features, name):
      groups = next(g for g in range(min(32, features), 0, -1) if features % g == 0)
      return nn.GroupNorm(
          num_groups=groups, dtype=self.dtype, name=name,
          scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))

    h = nn.leaky_relu(conv(self.width, 2, "conv0")(images.astype(self.dtype)), 0.2)
    for layer in range(1, self.num_layers):
      features = self.width * min(2 ** layer, 8)
      h = conv(features, 2, f"conv{layer}")(h)
      h = nn.leaky_relu(norm(features, f"norm{layer}")(h), 0.2)
    features = self.width * min(2 ** self.num_layers, 8)
    h = nn.leaky_relu(norm(features, "norm_last")(conv(features, 1, "conv_last")(h)), 0.2)
    return conv(1, 1, "logits")(h).astype(jnp.float32)


def hinge_discriminator_loss(real_logits: Array, fake_logits: Array) -> Array:
  """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), halved as in VQGAN."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) +
                jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def hinge_generator_loss(fake_logits: Array) -> Array:
  """-mean(D(G(z)))."""
  return -jnp.mean(fake_logits)


def last_layer_conv(features: Array, kernel: Array, bias: Array) -> Array:
  """The decoder's last 3x3 'SAME' conv, as a function of its weights (same as `nn.Conv`)."""
  out = jax.lax.conv_general_dilated(features, kernel.astype(features.dtype), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return (out + bias.astype(out.dtype)).astype(jnp.float32)


def adaptive_weight(features: Array, kernel: Array, bias: Array,
                    reconstruction_loss: Callable[[Array], Array],
                    generator_loss: Callable[[Array], Array], max_weight: float = 1e4) -> Array:
  """|d L_rec / d W| / (|d L_gan / d W| + 1e-4) for the decoder's last conv kernel W.

  `features` is the input of that conv; both losses are functions of the decoded images. Only
  the last conv (and, for L_gan, the discriminator) is differentiated, not the whole decoder.
  The result carries no gradient.
  """
  features = jax.lax.stop_gradient(features)
  kernel = jax.lax.stop_gradient(kernel)
  bias = jax.lax.stop_gradient(bias)
  rec_grad = jax.grad(lambda w: reconstruction_loss(last_layer_conv(features, w, bias)))(kernel)
  gan_grad = jax.grad(lambda w: generator_loss(last_layer_conv(features, w, bias)))(kernel)
  weight = jnp.linalg.norm(rec_grad) / (jnp.linalg.norm(gan_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))
