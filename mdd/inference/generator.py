"""Text -> image with a trained workdir: tokenizer + denoiser + sampler in one object.

`Generator.from_workdir(workdir, config)` restores the tokenizer (DIR/tokenizer) and the
denoiser's EMA parameters (DIR/denoiser/checkpoints), and `generate(prompts, seeds)` samples
token grids with `mdd.sampling.sampler.sample` and decodes them. The sample CLI, the evaluations and the
ablation scripts all generate through it, so they agree on what "the model's samples" are.
Sample b uses `fold_in(key(config.seed), seeds[b])`: the same seed gives the same image whatever
the batch it is generated in.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mdd import sampling as sampler_lib
from mdd import workdir as workdir_lib


# Rows per decoder call (see `Generator.decode`).
DECODE_CHUNK = 8


@dataclasses.dataclass
class Generator:
  """A trained tokenizer + denoiser, ready to sample."""
  config: ml_collections.ConfigDict
  tokenizer: workdir_lib.TrainedTokenizer
  system: Any
  params: Any
  grid_shape: tuple[int, int]
  step: int

  @classmethod
  def from_workdir(cls, workdir: str, config=None, step: int | None = None) -> "Generator":
    """The trained tokenizer and denoiser (EMA) of `workdir`, with its run config unless
    `config` is given; the latest denoiser checkpoint unless `step` names another."""
    run = workdir_lib.Workdir(workdir)
    if config is None:
      config = run.load_run_config()
    tokenizer = run.load_tokenizer()
    system = run.denoiser_system(config)
    params, step = run.load_denoiser_params(system, config, step=step)
    height, width = workdir_lib.image_hw(config.data)
    f = tokenizer.downsample_factor
    return cls(config=config, tokenizer=tokenizer, system=system, params=params,
               grid_shape=(height // f, width // f), step=step)

  @property
  def mask_id(self) -> int:
    return int(self.system.denoiser.mask_id)

  def sampler_config(self, **overrides) -> sampler_lib.SamplerConfig:
    section = ml_collections.ConfigDict(self.config.sampler.to_dict())
    section.update(overrides)
    return sampler_lib.SamplerConfig.from_config(section, mask_id=self.mask_id)

  def decode(self, tokens) -> np.ndarray:
    """Token ids [B, h, w] (no mask ids) -> uint8 images [B, H, W, 3].

    Decoded in chunks of `DECODE_CHUNK` rows (the last one padded), so an image depends on its
    tokens alone: XLA may pick kernels that round differently for different batch shapes, and
    a sample must not change by a pixel level with the batch it was drawn in."""
    tokens = np.asarray(tokens)
    n = len(tokens)
    if n == 0:
      return self.tokenizer.decode(tokens)
    padded = -(-n // DECODE_CHUNK) * DECODE_CHUNK
    tokens = np.concatenate([tokens, np.repeat(tokens[-1:], padded - n, axis=0)])
    return np.concatenate([np.asarray(self.tokenizer.decode(tokens[i:i + DECODE_CHUNK]))
                           for i in range(0, padded, DECODE_CHUNK)])[:n]

  def encode(self, images) -> np.ndarray:
    return self.tokenizer.encode(images)

  def generate(self, prompts: list[str], seeds: list[int] | np.ndarray, *, tokens=None,
               fixed=None, sampler_cfg: sampler_lib.SamplerConfig | None = None,
               decode: bool = True, pad_to: int | None = None) -> dict[str, Any]:
    """Samples one image per prompt; `tokens` [B, h, w] (with mask ids) turns it into
    inpainting or outpainting, on their own grid (default: the training grid, all masked).

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
    if tokens is None:
      tokens = jnp.full((n, *self.grid_shape), self.mask_id, jnp.int32)
    # The model runs on any grid (2-D RoPE): an outpainting canvas or another canvas size
    # gets the model function of its own grid.
    logits_fn = _cached_logits_fn(self.system, self.config, tuple(np.shape(tokens)[1:]))
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


def model_generate_fn(workdir: str, config=None, **sampler_overrides):
  """`generate_fn(prompts, seeds) -> uint8 [B, H, W, 3]` from DIR's tokenizer + denoiser.

  Uses the run's config (DIR/config.json) unless one is given, and its sampler section with
  `sampler_overrides` applied (e.g. `edit_threshold=1.0` to switch editing off).
  """
  gen = Generator.from_workdir(workdir, config)
  batch_size = int(gen.config.get("eval", {}).get("shapes_geneval", {}).get("batch_size", 64))
  return gen.generate_fn(batch_size=batch_size, **sampler_overrides)
