"""Unmask-and-edit sampler for masked discrete diffusion: one `lax.scan`, CFG, token editing.

`sample(logits_fn, rng, tokens, config)` fills every `config.mask_id` position of `tokens`, so
generation (all masked), inpainting (some masked, the rest fixed) and editing (visible tokens
that may be revised) are one function. Each scan step runs the model once and then

1. unmasks the number of masked positions the schedule asks for (>= 1 per step; all of them by
   the last step), chosen by the unmask policy (confidence + annealed Gumbel noise, a fixed or
   randomly shifted 2-D Halton order, or entropy-bounded acceptance);
2. edits visible, non-fixed positions whose new prediction differs from the current token with
   probability above `edit_threshold` (and `edit_margin` above the current token's), at most
   `edit_max_fraction` of the grid per step, inside the window [edit_start_step, edit_end_step),
   either overwriting them or re-masking them for a later step to refill;
3. optionally re-masks decoded positions at random (ReMDM-style, as a comparison policy).

After the `num_steps` unmask steps come `num_edit_passes` post-fill edit passes in the same scan.
Everything that varies over steps (mask ratio, temperature, guidance, noise, windows) is a
host-side table (`step_table`) fed to the scan, so a config compiles to one program per shape.

The model contract (`logits_fn`)
--------------------------------
    logits_fn(context, tokens, info) -> logits
      context: any pytree passed to `sample(..., context=...)` (params, text embeddings, ...).
               It is a traced jit argument, so new weights or prompts do not recompile and are
               not baked into the program as constants.
      tokens:  int32 [R, L] flattened token rows (mask_id at masked positions).
      info:    `StepInfo` (step, progress, cond_mask [R], row_index [R], mask_ratio [R]).
      logits:  float [R, L, V] with V >= mask_id (columns >= mask_id, if any, are ignored).
               Logits must be finite (use a large negative number to exclude a token).

Without guidance R = B and every row is conditional. With classifier-free guidance the sampler
doubles the batch in ONE call: R = 2B, rows interleaved as [cond_0, uncond_0, cond_1, ...] (so a
batch-sharded pair stays on one device); `info.cond_mask` is True on conditional rows and
`info.row_index` maps each row to its sample (0..B-1). `info.per_row(x)` expands a per-sample
array (e.g. text embeddings [B, ...]) to the rows. The closure drops the conditioning where
`cond_mask` is False. At steps whose guidance weight is 0 (schedule or interval) a `lax.cond`
runs the cheaper B-row call instead, so `logits_fn` is traced for both row counts.

Determinism: sample b draws a seed from `fold_in(rng, sample_index[b])` (default
`sample_index = arange(B)`) and every random number of step s at (position, column) is a hash of
(seed, s, position, column), so a sample does not change with batch size, position in the batch
or device count; the batch axis may be sharded (e.g. `NamedSharding(mesh, P("data"))`).
"""

import functools
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mdd.sampling import policies
from mdd.sampling.config import SamplerConfig, step_table
from mdd.sampling.noise import counter_uniform, step_seed

LogitsFn = Callable[[Any, jax.Array, "StepInfo"], jax.Array]


@flax.struct.dataclass
class StepInfo:
  """What `logits_fn` learns about the step; arrays are per model row (R = B or 2B)."""
  step: jax.Array          # int32 scalar, 0-based scan step (>= num_steps in edit passes)
  progress: jax.Array      # float32 scalar, step / num_steps of the unmask schedule, in [0, 1)
  cond_mask: jax.Array     # bool [R], False on unconditional (CFG) rows
  row_index: jax.Array     # int32 [R], the sample (0..B-1) each row belongs to
  mask_ratio: jax.Array    # float32 [R], fraction of the row's positions that are masked
  rows_per_sample: int = flax.struct.field(pytree_node=False, default=1)

  def per_row(self, per_sample):
    """Expands a pytree of per-sample arrays [B, ...] to the model rows [R, ...]."""
    return jax.tree.map(lambda x: jnp.repeat(x, self.rows_per_sample, axis=0), per_sample)


@flax.struct.dataclass
class SamplerState:
  """Carry of the scan: the current tokens and the per-sample constants."""
  tokens: jax.Array        # int32 [B, L]
  fixed: jax.Array         # bool [B, L], never edited or re-masked (unless config.edit_fixed)
  seeds: jax.Array         # uint32 [B, 2] per-sample seeds, from fold_in(rng, sample_index)
  num_initial_masked: jax.Array  # int32 [B], what the schedule's ratios are relative to
  order_rank: jax.Array    # float32 [B, L], spatial unmask rank (Halton policies), else zeros


@flax.struct.dataclass
class Trajectory:
  """Per-step record, leading axis = scan step (num_steps + num_edit_passes)."""
  tokens: jax.Array        # int32 [S, B, ...] after each step (mask_id where masked)
  unmasked: jax.Array      # bool [S, B, ...] filled from mask at this step
  edited: jax.Array        # bool [S, B, ...] revised at this step (overwritten or re-masked)


@flax.struct.dataclass
class SampleOutput:
  tokens: jax.Array                  # int32, same shape as the input tokens, no mask_id left
  trajectory: Optional[Trajectory]   # None when config.record_trajectory is False
  stats: dict                        # see `sample`



# ----------------------------------------------------------------------------------------------
# Per-row building blocks (public for tests and for other samplers).


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k and outside the top-p nucleus to -inf, over the last axis."""
  if top_k > 0 and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # Keep a token while the mass of the better ones is below top_p (the best is always kept).
    kept = mass_before < top_p
    cutoff = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def top_count_mask(score: jax.Array, count: jax.Array) -> jax.Array:
  """bool [L]: the `count` highest scores of one row (stable: ties go to the lower index)."""
  order = jnp.argsort(-score, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(score.shape[0], dtype=order.dtype))
  return rank < count


# ----------------------------------------------------------------------------------------------
# The sampler.


def model_logits(logits_fn, context, tokens, step, progress, guidance, config):
  """Runs the model (with CFG rows when guidance is on); returns float32 [B, L, V]."""
  batch = tokens.shape[0]
  mask_ratio = jnp.mean(tokens == config.mask_id, axis=-1, dtype=jnp.float32)

  def conditional(_):
    info = StepInfo(step=step, progress=progress, cond_mask=jnp.ones((batch,), bool),
                    row_index=jnp.arange(batch, dtype=jnp.int32), mask_ratio=mask_ratio,
                    rows_per_sample=1)
    return _check_logits(logits_fn(context, tokens, info), tokens, config).astype(jnp.float32)

  if config.guidance_scale == 0:
    return conditional(None)

  def guided(_):
    info = StepInfo(step=step, progress=progress,
                    cond_mask=jnp.tile(jnp.array([True, False]), batch),
                    row_index=jnp.repeat(jnp.arange(batch, dtype=jnp.int32), 2),
                    mask_ratio=jnp.repeat(mask_ratio, 2), rows_per_sample=2)
    rows = _check_logits(logits_fn(context, jnp.repeat(tokens, 2, axis=0), info),
                         jnp.repeat(tokens, 2, axis=0), config).astype(jnp.float32)
    rows = rows.reshape(batch, 2, *rows.shape[1:])
    cond, uncond = rows[:, 0], rows[:, 1]
    return cond + guidance * (cond - uncond)  # = (1 + w) c - w u

  # Steps with weight 0 (schedule/interval) run the B-row model only.
  return jax.lax.cond(guidance != 0, guided, conditional, None)


def _check_logits(logits, tokens, config):
  if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
    raise ValueError(f"logits_fn must return [R, L, V] for tokens {tokens.shape}, "
                     f"got {logits.shape}")
  if logits.shape[-1] < config.mask_id:
    raise ValueError(f"logits_fn returned V={logits.shape[-1]} < mask_id={config.mask_id}; "
                     "the codebook ids 0..mask_id-1 need logits")
  return logits


def _sample_step(state: SamplerState, xs: dict, *, logits_fn, context, config: SamplerConfig):
  tokens, fixed = state.tokens, state.fixed
  mask_id = config.mask_id
  batch, length = tokens.shape
  masked = tokens == mask_id

  logits = model_logits(logits_fn, context, tokens, xs["step"], xs["progress"],
                         xs["guidance"], config)
  if logits.shape[-1] > mask_id:
    # Ids from mask_id up are not codebook entries: never propose them.
    logits = logits.at[..., mask_id:].set(-jnp.inf)
  log_probs = jax.nn.log_softmax(logits, axis=-1)

  # One uniform draw per sample and step feeds every random choice of the step: Gumbel noise for
  # the proposal (V columns), for the confidence score and for ReMDM (one column each).
  vocab = logits.shape[-1]
  seeds = step_seed(state.seeds, xs["step"])
  uniform = jax.vmap(functools.partial(counter_uniform, shape=(length, vocab + 2)))(seeds)
  gumbel = -jnp.log(-jnp.log(uniform[..., :vocab + 1]))

  # Proposal: one token per position from the tempered, filtered distribution (Gumbel-max).
  temperature = xs["temperature"]
  table = step_table(config)["temperature"]
  filtered = filter_logits(logits, config.top_k, config.top_p)
  sampled = argmax = None
  if np.any(table > 0):
    sampled = jnp.argmax(filtered / jnp.maximum(temperature, 1e-6) + gumbel[..., :vocab], axis=-1)
  if np.any(table <= 0):
    argmax = jnp.argmax(filtered, axis=-1)
  if sampled is None:
    proposal = argmax
  elif argmax is None:
    proposal = sampled
  else:
    proposal = jnp.where(temperature > 0, sampled, argmax)
  proposal = proposal.astype(jnp.int32)
  logp_proposal = jnp.take_along_axis(log_probs, proposal[..., None], axis=-1)[..., 0]

  # 1. Unmask: the schedule says how many, the policy says which.
  num_masked = jnp.sum(masked, axis=-1, dtype=jnp.int32)
  # The small epsilon keeps float32 rounding (e.g. 12 * (1 - 1/6) = 9.99999) from unmasking one
  # token more than the schedule's exact count.
  target = jnp.floor(state.num_initial_masked * xs["mask_ratio_after"] + 1e-3).astype(jnp.int32)
  num_unmask = jnp.minimum(num_masked, jnp.maximum(num_masked - target, 1))
  policy = policies.UNMASK_POLICIES[config.unmask_policy]
  score, num_unmask = policy.select(policies.PolicyInputs(
      log_probs=log_probs, logp_proposal=logp_proposal, gumbel=gumbel[..., vocab],
      uniform=uniform[..., vocab], noise=xs["noise"], order_rank=state.order_rank,
      masked=masked, num_unmask=num_unmask), config)
  score = jnp.where(masked, score, -jnp.inf)
  unmask = jax.vmap(top_count_mask)(score, num_unmask) & masked

  # 2. Edit visible positions the model now confidently disagrees with.
  editable = ~masked if config.edit_fixed else ~masked & ~fixed
  edit = jnp.zeros_like(masked)
  if config.editing:
    current = jnp.where(masked, 0, tokens)
    p_current = jnp.exp(jnp.take_along_axis(log_probs, current[..., None], axis=-1)[..., 0])
    p_proposal = jnp.exp(logp_proposal)
    candidates = (editable & (proposal != tokens) & (p_proposal > config.edit_threshold)
                  & (p_proposal > p_current + config.edit_margin) & xs["edit_active"])
    gain = jnp.where(candidates, p_proposal - p_current, -jnp.inf)
    cap = config.max_edits_per_step(length)
    edit = jax.vmap(top_count_mask, in_axes=(0, None))(gain, cap) & candidates

  # 3. ReMDM-style random re-masking of decoded positions (comparison policy).
  remask = jnp.zeros_like(masked)
  if config.remask_policy == "remdm":
    remask = (uniform[..., vocab + 1] < xs["remdm_sigma"]) & editable & ~edit

  new_tokens = jnp.where(unmask, proposal, tokens)
  new_tokens = jnp.where(edit, jnp.where(xs["edit_remasks"], mask_id, proposal), new_tokens)
  new_tokens = jnp.where(remask, mask_id, new_tokens)

  per_step = dict(
      num_unmasked=jnp.sum(unmask, axis=-1, dtype=jnp.int32),
      num_edited=jnp.sum(edit, axis=-1, dtype=jnp.int32),
      num_remasked=jnp.sum(remask | (edit & xs["edit_remasks"]), axis=-1, dtype=jnp.int32),
      num_masked=jnp.sum(new_tokens == mask_id, axis=-1, dtype=jnp.int32))
  if config.record_trajectory:
    per_step.update(traj_tokens=new_tokens, traj_unmasked=unmask, traj_edited=edit)
  return state.replace(tokens=new_tokens), per_step


@functools.partial(jax.jit, static_argnames=("logits_fn", "config"))
def sample(logits_fn: LogitsFn, rng: jax.Array, tokens: jax.Array, config: SamplerConfig, *,
           context: Any = None, fixed: Optional[jax.Array] = None,
           sample_index: Optional[jax.Array] = None) -> SampleOutput:
  """Fills every `config.mask_id` position of `tokens`; see the module docstring for logits_fn.

  Args:
    logits_fn: `logits_fn(context, tokens [R, L], info: StepInfo) -> logits [R, L, V]`. A static
      argument: pass the same function object each call (not a fresh lambda) to reuse the
      compiled program.
    rng: a PRNG key; sample b uses `fold_in(rng, sample_index[b])`.
    tokens: int [B, h, w] or [B, L]; mask_id where unknown.
    config: `SamplerConfig` (static).
    context: pytree handed to `logits_fn` unchanged (traced: params, text embeddings, ...).
    fixed: bool like `tokens`; positions never edited or re-masked (unless config.edit_fixed).
      Masked positions are filled regardless. Default: every position given in `tokens`.
    sample_index: int [B], global index of each sample (default arange(B)).

  Returns:
    `SampleOutput(tokens, trajectory, stats)`: tokens like the input with no mask left;
    trajectory `Trajectory` of [S, B, ...] arrays (S = num_steps + num_edit_passes) or None;
    stats: int32 [S, B] `num_unmasked`, `num_edited`, `num_remasked`, `num_masked` (after the
    step), and float32 [S] `temperature`, `guidance`.
  """
  if tokens.ndim not in (2, 3):
    raise ValueError(f"tokens must be [B, L] or [B, h, w], got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer, got {tokens.dtype}")
  grid_shape = tokens.shape[1:]
  batch = tokens.shape[0]
  flat = tokens.reshape(batch, -1).astype(jnp.int32)
  masked = flat == config.mask_id
  if fixed is None:
    fixed_flat = ~masked
  else:
    if fixed.shape != tokens.shape:
      raise ValueError(f"fixed has shape {fixed.shape}, tokens {tokens.shape}")
    fixed_flat = fixed.reshape(batch, -1).astype(bool) & ~masked
  if sample_index is None:
    sample_index = jnp.arange(batch, dtype=jnp.int32)
  elif sample_index.shape != (batch,):
    raise ValueError(f"sample_index must have shape ({batch},), got {sample_index.shape}")

  # The only threefry call: one 64-bit seed per sample; steps hash it with their index.
  seeds = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(rng, i), (2,), jnp.uint32))(
      sample_index)

  policy = policies.UNMASK_POLICIES[config.unmask_policy]
  if policy.initial_rank is not None:
    grid = grid_shape if len(grid_shape) == 2 else (1, grid_shape[0])
    order_rank = policy.initial_rank(seeds, grid, config).astype(jnp.float32)
  else:
    order_rank = jnp.zeros(flat.shape, jnp.float32)

  state = SamplerState(tokens=flat, fixed=fixed_flat, seeds=seeds,
                       num_initial_masked=jnp.sum(masked, axis=-1, dtype=jnp.int32),
                       order_rank=order_rank)
  table = step_table(config)
  xs = {name: jnp.asarray(value) for name, value in table.items()}
  body = functools.partial(_sample_step, logits_fn=logits_fn, context=context, config=config)
  state, per_step = jax.lax.scan(body, state, xs)

  unflatten = lambda x: x.reshape(x.shape[0], batch, *grid_shape)
  trajectory = None
  if config.record_trajectory:
    trajectory = Trajectory(tokens=unflatten(per_step.pop("traj_tokens")),
                            unmasked=unflatten(per_step.pop("traj_unmasked")),
                            edited=unflatten(per_step.pop("traj_edited")))
  stats = dict(per_step, temperature=xs["temperature"], guidance=xs["guidance"])
  return SampleOutput(tokens=state.tokens.reshape(tokens.shape), trajectory=trajectory,
                      stats=stats)

