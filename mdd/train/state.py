"""Train state (params, optimizer state, EMA) and the optimizer built from a config section."""

from __future__ import annotations

from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp
import optax


class TrainState(struct.PyTreeNode):
  """Parameters, optimizer state and an optional EMA copy of the parameters.

  Parameters may stay boxed (`nn.LogicallyPartitioned`): optax and the EMA map over the boxes'
  values, and the loop reads the logical names from them to shard the whole state.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  ema_decay: float = struct.field(pytree_node=False, default=0.0)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, ema_decay: float = 0.0) -> "TrainState":
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    ema = jax.tree.map(jnp.copy, params) if ema_decay > 0 else None
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               ema_params=ema, tx=tx, ema_decay=ema_decay)

  def apply_gradients(self, grads) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema = self.ema_params
    if self.ema_decay > 0:
      d = ema_decay_at(self.ema_decay, self.step)
      ema = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema, params)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema)

  @property
  def eval_params(self):
    """The parameters to evaluate and sample with: the EMA copy when there is one."""
    return self.ema_params if self.ema_params is not None else self.params


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """EMA decay of update `step` (0-based): min(decay, (1 + step) / (10 + step)).

  The warm-up keeps the average from being dominated by the random initialisation in short runs:
  with a constant 0.999, the EMA after 600 steps still holds 0.999^600 = 55% of the initial
  weights; with the warm-up its weight is ~0.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_schedule(cfg) -> optax.Schedule:
  """Linear warm-up then cosine decay to `cfg.lr * cfg.get('min_lr_ratio', 0.1)`."""
  warmup = int(cfg.get("warmup_steps", 0))
  total = max(int(cfg.num_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else float(cfg.lr), peak_value=float(cfg.lr),
      warmup_steps=warmup, decay_steps=total,
      end_value=float(cfg.lr) * float(cfg.get("min_lr_ratio", 0.1)))


def make_optimizer(cfg) -> optax.GradientTransformation:
  """AdamW with warm-up + cosine and global-norm clipping.

  cfg fields: lr, warmup_steps, num_steps, b1, b2, weight_decay, grad_clip (0 = off),
  min_lr_ratio.
  """
  parts = []
  if float(cfg.get("grad_clip", 0.0)) > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  parts.append(optax.adamw(make_schedule(cfg), b1=float(cfg.get("b1", 0.9)),
                           b2=float(cfg.get("b2", 0.99)),
                           weight_decay=float(cfg.get("weight_decay", 0.0)),
                           mask=_decay_mask))
  return optax.chain(*parts)


def _decay_mask(params):
  """Weight decay on matrices and kernels only (not biases, norms' scales, embeddings' 1-D)."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)
