"""Text -> image with a trained workdir: tokenizer + denoiser + sampler in one object.

`Generator.from_workdir(workdir, config)` restores the tokenizer (DIR/tokenizer) and the
denoiser's EMA parameters (DIR/denoiser/checkpoints), and `generate(prompts, seeds)` samples
token grids with `mdd.sampler.sample` and decodes them. The sample CLI, the evaluations and the
ablation scripts all generate through it, so they agree on what "the model's samples" are.
Sample b uses `fold_in(key(config.seed), seeds[b])`: the same seed gives the same image whatever
the batch it is generated in.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mdd import sampler as sampler_lib


def to_uint8(images) -> np.ndarray:
  """float images in [-1, 1] -> uint8 [0, 255]."""
  images = np.asarray(jax.device_get(images), np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def restore_denoiser_params(system, config, workdir: str):
  """EMA (else raw) parameters of the latest denoiser checkpoint, unboxed, on one device."""
  from mdd.train import loop  # pylint: disable=import-outside-toplevel
  from mdd.train import state as state_lib  # pylint: disable=import-outside-toplevel
  ema_decay = float(config.denoiser_train.get("ema_decay", 0.0))
  # Only the shapes of params / EMA matter for the partial restore: any optimizer will do.
  init = lambda rng: state_lib.TrainState.create(system.init_params(rng),  # noqa: E731
                                                 optax.identity(), ema_decay=ema_decay)
  ckpt_dir = os.path.join(workdir, "denoiser", "checkpoints")
  try:
    return loop.restore_eval_params(ckpt_dir, jax.eval_shape(init, jax.random.key(0)))
  except FileNotFoundError:
    raise FileNotFoundError(f"no denoiser checkpoint under {os.path.abspath(ckpt_dir)} (run "
                            "--config.mode=train first)") from None


@dataclasses.dataclass
class Generator:
  """A trained tokenizer + denoiser, ready to sample."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  tokenizer_params: Any
  system: Any
  params: Any
  grid_shape: tuple[int, int]
  step: int

  @classmethod
  def from_workdir(cls, workdir: str, config=None) -> "Generator":
    from mdd.models import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
    from mdd.train import denoiser_task  # pylint: disable=import-outside-toplevel
    if config is None:
      config = load_run_config(workdir)
    tokenizer, tok_params, table = tokenizer_lib.load_tokenizer(workdir)
    if table is None:
      raise FileNotFoundError(f"{workdir}/tokenizer has no neighbours.npz")
    system = denoiser_task.system_from_config(
        config, vocab_size=int(tokenizer.num_codes), neighbours=table.neighbours,
        neighbour_weights=table.weights)
    params, step = restore_denoiser_params(system, config, workdir)
    height, width = image_hw(config)
    f = int(tokenizer.downsample_factor)
    return cls(config=config, tokenizer=tokenizer, tokenizer_params=tok_params, system=system,
               params=params, grid_shape=(height // f, width // f), step=step)

  @property
  def mask_id(self) -> int:
    return int(self.system.denoiser.mask_id)

  def sampler_config(self, **overrides) -> sampler_lib.SamplerConfig:
    section = ml_collections.ConfigDict(self.config.sampler.to_dict())
    section.update(overrides)
    return sampler_lib.SamplerConfig.from_config(section, mask_id=self.mask_id)

  def decode(self, tokens) -> np.ndarray:
    """Token ids [B, h, w] (no mask ids) -> uint8 images [B, H, W, 3]."""
    return to_uint8(_decode(self.tokenizer, self.tokenizer_params, jnp.asarray(tokens)))

  def encode(self, images) -> np.ndarray:
    return np.asarray(_encode(self.tokenizer, self.tokenizer_params, jnp.asarray(images)))

  def generate(self, prompts: list[str], seeds: list[int] | np.ndarray, *, tokens=None,
               fixed=None, sampler_cfg: sampler_lib.SamplerConfig | None = None,
               decode: bool = True, pad_to: int | None = None) -> dict[str, Any]:
    """Samples one image per prompt; `tokens` (with mask ids) turns it into inpainting.

    `pad_to` runs a batch of that many rows (the last row repeated) and returns the first
    `len(prompts)`: every call then has one shape and reuses one compiled sampler. Rows are
    independent (each sample is decided by its seed), so padding changes no output.
    """
    if len(prompts) != len(seeds):
      raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    n = len(prompts)
    if pad_to is not None and pad_to < n:
      raise ValueError(f"pad_to={pad_to} is smaller than the batch of {n} prompts")
    cfg = sampler_cfg or self.sampler_config()
    logits_fn = _cached_logits_fn(self.system, self.config, self.grid_shape)
    if tokens is None:
      tokens = jnp.full((n, *self.grid_shape), self.mask_id, jnp.int32)
    prompts, seeds = list(prompts), np.asarray(seeds)
    tokens = jnp.asarray(tokens, jnp.int32)
    extra = (pad_to or n) - n
    if extra:
      prompts = prompts + prompts[-1:] * extra
      seeds, tokens = _repeat_last(seeds, extra), _repeat_last(tokens, extra)
      if fixed is not None:
        fixed = _repeat_last(jnp.asarray(fixed), extra)
    context = self.system.sampling_context(self.params, prompts)
    rng = jax.random.key(int(self.config.get("seed", 0)))
    out = sampler_lib.sample(logits_fn, rng, tokens, cfg, context=context, fixed=fixed,
                             sample_index=jnp.asarray(seeds, jnp.int32))
    result = {}
    if decode:  # The padded batch too: one compiled decoder.
      result["images"] = self.decode(out.tokens)[:n]
    if extra:
      out = _first_rows(out, n)
    result.update(tokens=np.asarray(out.tokens), output=out)
    return result

  def generate_fn(self, batch_size: int = 64, **sampler_overrides):
    """`generate_fn(prompts, seeds) -> uint8 images` for the evaluation layouts (every chunk,
    the last one too, runs at `batch_size` rows: one compiled sampler)."""
    cfg = self.sampler_config(**sampler_overrides)

    def generate_fn(prompts, seeds):
      images = []
      for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        images.append(self.generate(list(prompts[chunk]), list(seeds[chunk]),
                                    sampler_cfg=cfg, pad_to=batch_size)["images"])
      return np.concatenate(images, axis=0)

    generate_fn.fingerprint = self.fingerprint(cfg)
    return generate_fn

  def fingerprint(self, cfg: sampler_lib.SamplerConfig) -> dict:
    """What images depend on (checkpoint step, sampler settings): evaluation layouts compare it
    with the one they were written with and regenerate instead of resuming when it changed."""
    return {"denoiser_step": int(self.step),
            "sampler": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}


_LOGITS_FNS: dict = {}


def _cached_logits_fn(system, config, grid_shape):
  # The sampler is jitted with logits_fn static: one function object per model function + grid,
  # so repeated calls hit the compilation cache, also across Generators of the same run (the
  # pipeline's sample and eval stages each restore one). The model function is fixed by the
  # config sections `system_from_config` reads and the vocabulary; the neighbour table only
  # enters the loss, and the parameters arrive through `context`.
  sections = {k: config[k].to_dict() for k in ("denoiser", "text", "masking", "loss")
              if k in config}
  key = (json.dumps(sections, sort_keys=True, default=str),
         int(system.denoiser.vocab_size), tuple(grid_shape))
  if key not in _LOGITS_FNS:
    _LOGITS_FNS[key] = system.logits_fn(tuple(grid_shape))
  return _LOGITS_FNS[key]


def _repeat_last(x, extra: int):
  xp = np if isinstance(x, np.ndarray) else jnp
  return xp.concatenate([x, xp.repeat(x[-1:], extra, axis=0)])


def _first_rows(out: sampler_lib.SampleOutput, n: int) -> sampler_lib.SampleOutput:
  """The first n samples of a SampleOutput (trajectory and per-step stats are [S, B, ...])."""
  trajectory = out.trajectory
  if trajectory is not None:
    trajectory = jax.tree.map(lambda x: x[:, :n], trajectory)
  stats = {k: (v if k in ("temperature", "guidance") else v[:, :n]) for k, v in out.stats.items()}
  return sampler_lib.SampleOutput(tokens=out.tokens[:n], trajectory=trajectory, stats=stats)


def _decode(tokenizer, params, tokens):
  return jit_method(tokenizer, "decode")(params, tokens)


def _encode(tokenizer, params, images):
  return jit_method(tokenizer, "encode")(params, images)


_APPLY: dict = {}


def jit_method(module, method: str):
  """`jit(lambda params, x: module.apply({"params": params}, x, method=method))`, cached."""
  key = (id(module), method)
  if key not in _APPLY:
    _APPLY[key] = jax.jit(lambda p, x: module.apply({"params": p}, x, method=method))
  return _APPLY[key]


def image_hw(config) -> tuple[int, int]:
  """(height, width) of the images the run trains on."""
  res = config.data.resolution
  width = int(config.data.get("width", 0) or 0)
  if isinstance(res, (tuple, list)):
    return int(res[0]), int(res[1])
  return int(res), (width or int(res))


RUN_CONFIG = "config.json"


def save_run_config(config, workdir: str):
  """DIR/config.json: the config of the run, so CLIs given only a workdir can rebuild it."""
  import json  # pylint: disable=import-outside-toplevel
  from mdd.train import loop  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    loop.write_json_atomic(os.path.join(workdir, RUN_CONFIG),
                           json.loads(config.to_json_best_effort()))


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  import json  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, RUN_CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not an mdd workdir (run mdd.main on it first)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))
