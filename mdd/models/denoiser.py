"""The text-conditioned Transformer denoiser over a grid of image-token ids, and its sizes.

Input ids are codes `0..V-1` plus the mask id `V`. Each block is pre-norm self-attention with
2-D RoPE over the grid (any height/width, so several resolutions and aspect ratios share one
model), cross-attention to the text sequence, and a SwiGLU MLP. The mask ratio (and optional
extra micro-conditions) enter as a vector added to every token. Dropping the text for
classifier-free guidance swaps the text for a learned null embedding.

With `patch_size` p > 1 the Transformer runs on p x p token patches (DiT's patchify): the
p^2 token embeddings of a patch are concatenated and projected to one position, and after the
blocks each position is projected back to p^2 per-token hidden states; the final norm, head,
logits and loss stay per token.

The head is a bias-free `[D, V]` matrix so the loss can run fused without building logits:
`Denoiser(...)(..., return_hidden=True)` returns the final-normed hidden states and
`head_weights(params)` returns `w [V, D]` for `mdd.objectives.losses`.

Size variants (one table; parameter counts of the denoiser alone, text width 384, token
embedding and head included, at V = 16384 and V = 1024 codes; `python -m mdd.models.denoiser`
recomputes them with `eval_shape`, tests/test_denoiser.py checks them against a formula):

| variant | width | depth | heads | mlp   | V = 2^14 | V = 1024 |
|---------|-------|-------|-------|-------|----------|----------|
| mu      | 128   | 4     | 4     | 384   | 5.43M    | 1.49M    |
| S       | 384   | 12    | 6     | 1536  | 48.4M    | 36.6M    |
| B       | 768   | 12    | 12    | 3072  | 168M     | 144M     |
| L       | 1024  | 24    | 16    | 4096  | 539M     | 507M     |
| XL      | 1152  | 28    | 16    | 4608  | 783M     | 748M     |
| 1B      | 1536  | 24    | 12    | 6144  | 1.19B    | 1.14B    |
| 3B      | 2560  | 24    | 20    | 10240 | 3.24B    | 3.16B    |
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdd.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Variant:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int


VARIANTS: dict[str, Variant] = {
    "mu": Variant(width=128, depth=4, num_heads=4, mlp_dim=384),
    "S": Variant(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": Variant(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": Variant(width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "XL": Variant(width=1152, depth=28, num_heads=16, mlp_dim=4608),
    "1B": Variant(width=1536, depth=24, num_heads=12, mlp_dim=6144),
    "3B": Variant(width=2560, depth=24, num_heads=20, mlp_dim=10240),
}


def decode_variant(name: str) -> Variant:
  """The size of variant `name` (see the table in this module's docstring)."""
  if name not in VARIANTS:
    raise ValueError(f"unknown denoiser variant {name!r}; choose one of {list(VARIANTS)}")
  return VARIANTS[name]


def embedding_rows(vocab_size: int) -> int:
  """Rows of the input embedding: V codes + the mask id, padded to a multiple of 128."""
  return -(-(vocab_size + 1) // 128) * 128


class Denoiser(nn.Module):
  """Masked-token denoiser. Use `Denoiser.from_variant` or set the sizes directly."""
  vocab_size: int  # V codes; the mask token is id V.
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_micro_conds: int = 0  # Extra scalar conditions (e.g. resolution), besides the mask ratio.
  qk_norm: bool = True
  remat: bool = False  # Recompute each block in the backward pass (large variants).
  # One block under `nn.scan` with weights stacked on a leading "layers" axis: the program holds
  # one block instead of `depth`, so init and train-step compiles shrink; same function.
  scan_layers: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  # Tokens per side of one Transformer position: p x p token embeddings are concatenated and
  # projected to one position (DiT's patchify), and the trunk's output is projected back to p x p
  # per-token hidden states before the shared final norm and head, so logits, `return_hidden`
  # and the fused loss stay per token. p = 2 runs the trunk on a quarter of the positions.
  patch_size: int = 1

  @classmethod
  def from_variant(cls, variant: str, vocab_size: int, **kwargs) -> "Denoiser":
    """The variant's shape; a non-zero `width`, `depth`, `num_heads` or `mlp_dim` overrides it."""
    v = decode_variant(variant)
    shape = dict(width=v.width, depth=v.depth, num_heads=v.num_heads, mlp_dim=v.mlp_dim)
    for name in shape:
      value = kwargs.pop(name, 0)
      if value:
        shape[name] = int(value)
    return cls(vocab_size=vocab_size, **shape, **kwargs)

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @nn.compact
  def __call__(self, tokens: jax.Array, text: jax.Array, text_mask: jax.Array,
               mask_ratio: jax.Array, *, drop_text: jax.Array | None = None,
               micro_conds: jax.Array | None = None, return_hidden: bool = False):
    """Denoises a token grid.

    Args:
      tokens: int32 [B, h, w] codes in [0, V] (V = mask).
      text: [B, T, Dt] text-encoder outputs; text_mask: bool [B, T] (True = real token).
      mask_ratio: [B] fraction of masked tokens (the diffusion time the model is told).
      drop_text: bool [B]; True replaces the text with the learned null embedding (CFG).
      micro_conds: [B, num_micro_conds] extra scalar conditions, or None.
      return_hidden: return final hidden states [B, h, w, D] instead of logits [B, h, w, V].
    """
    if tokens.ndim != 3:
      raise ValueError(f"tokens must be [B, h, w], got shape {tokens.shape}")
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
    batch, height, width = tokens.shape
    p = self.patch_size
    if p < 1 or height % p or width % p:
      raise ValueError(f"token grid {height}x{width} is not divisible by patch_size {p}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Unit-scale token embeddings: the residual stream starts as token identity at O(1), not
    # drowned by the conditioning vector or the first blocks' outputs.
    emb_init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed"))
    # Rows V+1 (codes + mask) rounded up to 128 so the vocab axis shards evenly.
    x = layers.Embed(embedding_rows(self.vocab_size), self.width, embedding_init=emb_init,
                     name="token_embed", **kw)(tokens.reshape(batch, height * width))
    x = layers.constrain(x, ("act_batch", "act_len", "act_embed"))
    if p > 1:
      x = layers.dense(self.width, names=("mlp", "embed"), name="patch_in",
                       **kw)(_patchify(x, height, width, p))

    # Conditioning vector: mask ratio (and micro-conditions) -> MLP -> added to every token.
    cond = layers.sinusoidal_embedding(mask_ratio * 1000.0, 256)
    if self.num_micro_conds:
      if micro_conds is None or micro_conds.shape != (batch, self.num_micro_conds):
        raise ValueError(f"micro_conds must be [B, {self.num_micro_conds}]")
      extra = [layers.sinusoidal_embedding(micro_conds[:, i], 64)
               for i in range(self.num_micro_conds)]
      cond = jnp.concatenate([cond] + extra, axis=-1)
    cond = layers.dense(self.width, names=(None, "embed"), name="cond_in", use_bias=True,
                        **kw)(cond)
    # The conditioning rows are split like the tokens they are added to (by batch), not like
    # the kernels' features (a reshard between the two XLA can only do by replicating).
    cond = layers.constrain(cond, ("act_batch", "act_embed"))
    # Zero-initialised: conditioning starts as a no-op and is learned.
    cond = layers.dense(self.width, names=("mlp", "embed"), name="cond_out", use_bias=True,
                        kernel_init=nn.initializers.zeros, **kw)(nn.silu(cond))
    cond = layers.constrain(cond, ("act_batch", "act_embed"))
    x = x + cond[:, None, :]

    # Text context: project to the model width; CFG-dropped rows see only the null token.
    context = layers.dense(self.width, names=(None, "embed"), name="text_proj",
                           **kw)(text.astype(self.dtype))
    context = layers.RMSNorm(name="text_norm", **kw)(context)
    null = self.param("null_text", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (1, self.width), self.param_dtype)
    null = jnp.broadcast_to(null.astype(self.dtype)[None], (batch, 1, self.width))
    text_mask = text_mask.astype(bool)
    if drop_text is None:
      drop_text = jnp.zeros((batch,), bool)
    drop_text = drop_text.astype(bool)
    # The null token is always appended; it is the only visible key for dropped rows and
    # also guarantees no row attends to nothing (empty captions).
    context = jnp.concatenate([jnp.where(drop_text[:, None, None], 0, context), null], axis=1)
    context_mask = jnp.concatenate(
        [text_mask & ~drop_text[:, None], jnp.ones((batch, 1), bool)], axis=1)

    positions = layers.grid_positions(height // p, width // p)
    block_kw = dict(num_heads=self.num_heads, head_dim=self.width // self.num_heads,
                    mlp_dim=self.mlp_dim, cross_attention=True, qk_norm=self.qk_norm,
                    attention_impl=self.attention_impl, **kw)
    if self.scan_layers:
      step = nn.remat(_ScanStep, prevent_cse=False) if self.remat else _ScanStep
      blocks = nn.scan(step, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=self.depth,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = blocks(name="blocks", **block_kw)(x, positions, context, context_mask)
    else:
      block = nn.remat(layers.TransformerBlock) if self.remat else layers.TransformerBlock
      for i in range(self.depth):
        x = block(name=f"block_{i}", **block_kw)(x, positions, context, context_mask)
    if p > 1:
      x = layers.dense(p * p * self.width, names=("embed", "mlp"), name="patch_out",
                       **kw)(x)
      x = _unpatchify(x, height, width, p)
      x = layers.constrain(x, ("act_batch", "act_len", "act_embed"))
    x = layers.RMSNorm(name="final_norm", **kw)(x)
    if return_hidden:
      return x.reshape(batch, height, width, self.width)
    logits = layers.dense(self.vocab_size, names=("embed", "vocab"), name="head",
                          kernel_init=nn.initializers.zeros, **kw)(x)
    logits = layers.constrain(logits, ("act_batch", "act_len", "act_vocab"))
    return logits.reshape(batch, height, width, self.vocab_size)


def _patchify(x: jax.Array, height: int, width: int, p: int) -> jax.Array:
  """[B, h*w, D] per-token rows -> [B, (h/p)*(w/p), p*p*D], each p x p square concatenated."""
  b, _, d = x.shape
  x = x.reshape(b, height // p, p, width // p, p, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (height // p) * (width // p), p * p * d)


def _unpatchify(x: jax.Array, height: int, width: int, p: int) -> jax.Array:
  """The inverse of `_patchify`: [B, (h/p)*(w/p), p*p*D] -> [B, h*w, D]."""
  b, _, pd = x.shape
  d = pd // (p * p)
  x = x.reshape(b, height // p, width // p, p, p, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height * width, d)


class _ScanStep(layers.TransformerBlock):
  """A block as an `nn.scan` body: (carry, broadcast inputs) -> (carry, None)."""

  def __call__(self, x, positions, context, context_mask):  # pylint: disable=arguments-differ
    return super().__call__(x, positions, context, context_mask), None


def init_params(model: Denoiser, rng: jax.Array, *, grid: tuple[int, int] = (4, 4),
                text_len: int = 4, text_dim: int = 8):
  """Initial (boxed) params of `model`, including the head, from small dummy inputs.

  An unrolled model's blocks are drawn through the scanned layout and then unstacked into
  `block_0..`: the program holds one block's initialisers instead of `depth` copies (each random
  array is its own kernel to compile; the H200 took 68 s to init the unrolled `S` state, 10 s
  the scanned one). Each block still gets its own draws from the same distributions.
  """
  if not model.scan_layers and model.depth > 1:
    stacked = init_params(model.clone(scan_layers=True), rng, grid=grid, text_len=text_len,
                          text_dim=text_dim)
    return _unstack_blocks(stacked, model.depth)
  tokens = jnp.zeros((1,) + tuple(grid), jnp.int32)
  text = jnp.zeros((1, text_len, text_dim), jnp.float32)
  return model.init(rng, tokens, text, jnp.ones((1, text_len), bool), jnp.ones((1,)),
                    micro_conds=(jnp.zeros((1, model.num_micro_conds))
                                 if model.num_micro_conds else None))["params"]


def _unstack_blocks(params, depth: int):
  """Scanned params ("blocks", leading "layers" axis) -> the unrolled "block_{i}" layout."""
  params = dict(params)
  blocks = params.pop("blocks")

  def layer(leaf, i):
    if isinstance(leaf, nn.Partitioned):
      if leaf.names[0] != "layers":
        raise ValueError(f"expected a leading 'layers' axis, got names {leaf.names}")
      return leaf.replace(value=leaf.value[i], names=leaf.names[1:])
    return leaf[i]

  is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
  for i in range(depth):
    params[f"block_{i}"] = jax.tree.map(lambda leaf: layer(leaf, i), blocks, is_leaf=is_box)
  return params


def head_weights(params) -> jax.Array:
  """The classifier `w [V, D]` (the head kernel, transposed) for the fused loss."""
  kernel = nn.unbox(params["head"]["kernel"])
  return kernel.T


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nn.unbox(params)))


def param_count(variant: str, vocab_size: int, text_dim: int = 384) -> int:
  """Parameter count of a variant without allocating it (`eval_shape`)."""
  model = Denoiser.from_variant(variant, vocab_size)
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), text_dim=text_dim))
  return count_params(shapes)


if __name__ == "__main__":
  for name in VARIANTS:
    v = VARIANTS[name]
    print(f"| {name:7s} | {v.width:5d} | {v.depth:5d} | {v.num_heads:5d} | {v.mlp_dim:5d} | "
          f"{param_count(name, 16384) / 1e6:8.2f}M | {param_count(name, 1024) / 1e6:8.2f}M |")
