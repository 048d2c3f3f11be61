"""Text -> image with a trained workdir: tokenizer + denoiser + sampler in one object.

`Generator.from_workdir(workdir, config)` restores the tokenizer (DIR/tokenizer) and the
denoiser's EMA parameters (DIR/denoiser/checkpoints), and `generate(prompts, seeds)` samples
token grids with `mdd.sampling.sampler.sample` and decodes them. The sample CLI, the evaluations and the
ablation scripts all generate through it, so they agree on what "the model's samples" are.
Sample b uses `fold_in(key(config.seed), seeds[b])`: the same seed gives the same image whatever
the batch it is generated in.

On the mesh, across processes: the denoiser's parameters are restored straight into the
shardings the train loop gives them on `config.mesh` (with `config.sharding_rules`), and the
sampler runs under that mesh. Every process calls `generate` with the same prompts and seeds; a
batch is a global array whose rows are split over the mesh's batch axes (data, fsdp), each
process supplying (and text-encoding) only the rows its devices hold. The tokenizer lives on
each process's first device: a process decodes its own rows, then every process receives all
images (and tokens, trajectory, stats), so callers see the same result on every process and
need not know how many there are. Who writes files is the caller's business (process 0: see
`mdd.utils.sharding.on_main_process`).
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
from mdd.utils import oom, sharding


# Rows per decoder call (see `Generator.decode`).
DECODE_CHUNK = 8


@dataclasses.dataclass
class Generator:
  """A trained tokenizer + denoiser, ready to sample on `mesh`."""
  config: ml_collections.ConfigDict
  tokenizer: workdir_lib.TrainedTokenizer
  system: Any
  params: Any
  grid_shape: tuple[int, int]
  step: int
  mesh: jax.sharding.Mesh | None = None
  rules: tuple = sharding.DEFAULT_RULES

  def __post_init__(self):
    if self.mesh is None:  # Parameters given directly: a mesh of this process's first device.
      self.mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                                     jax.local_devices()[:1])

  @classmethod
  def from_workdir(cls, workdir: str, config=None, step: int | None = None) -> "Generator":
    """The trained tokenizer and denoiser (EMA) of `workdir`, with its run config unless
    `config` is given; the latest denoiser checkpoint unless `step` names another. The
    denoiser's parameters land in their training shardings on `config.mesh`, which must fit
    this job's devices."""
    run = workdir_lib.Workdir(workdir)
    if config is None:
      config = run.load_run_config()
    mesh = sampling_mesh(config)
    tokenizer = run.load_tokenizer()
    system = run.denoiser_system(config)
    params, step = run.load_denoiser_params(system, config, step=step, mesh=mesh)
    height, width = workdir_lib.image_hw(config.data)
    f = tokenizer.downsample_factor
    return cls(config=config, tokenizer=tokenizer, system=system, params=params,
               grid_shape=(height // f, width // f), step=step, mesh=mesh,
               rules=sharding.rules_from_config(config))

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
    independent (each sample is decided by its seed), so padding changes no output. The batch
    is further padded to a multiple of the mesh's batch shards. With several processes every
    process calls this with the same arguments and gets the same result.
    Returns {"images" uint8 [B, H, W, 3] (unless `decode` is False), "tokens" [B, h, w],
    "output": the `SampleOutput` of the B samples (NumPy arrays with several processes)}.
    """
    if len(prompts) != len(seeds):
      raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    n = len(prompts)
    if n == 0:
      raise ValueError("generate: no prompts")
    if pad_to is not None and pad_to < n:
      raise ValueError(f"pad_to={pad_to} is smaller than the batch of {n} prompts")
    cfg = sampler_cfg or self.sampler_config()
    if tokens is None:
      tokens = np.full((n, *self.grid_shape), self.mask_id, np.int32)
    tokens = np.asarray(tokens, np.int32)
    # The model runs on any grid (2-D RoPE): an outpainting canvas or another canvas size
    # gets the model function of its own grid.
    logits_fn = _cached_logits_fn(self.system, self.config, tuple(tokens.shape[1:]),
                                  self.mesh, self.rules)
    shards = sharding.batch_size_divisor(self.mesh)
    rows = -(-(pad_to or n) // shards) * shards
    extra = rows - n
    prompts, seeds = list(prompts) + list(prompts[-1:]) * extra, np.asarray(seeds)
    seeds, tokens = _repeat_last(seeds, extra), _repeat_last(tokens, extra)
    if fixed is not None:
      fixed = _repeat_last(np.asarray(fixed, bool), extra)
    # This process's rows: it encodes their text and feeds them to its devices.
    local = sharding.process_rows(self.mesh, rows)
    place = lambda host: sharding.rows_to_global(self.mesh, host[local], local, rows)  # noqa: E731
    text = {k: sharding.rows_to_global(self.mesh, v, local, rows)
            for k, v in self.system.host_text_batch([prompts[i] for i in local]).items()}
    key = jax.random.key_data(jax.random.key(int(self.config.get("seed", 0))))
    rng = jax.random.wrap_key_data(sharding.replicated(self.mesh, key))  # The same everywhere.
    context_fn = _cached_context_fn(self.system, self.config, self.mesh, self.rules)
    with sharding.mesh_context(self.mesh, self.rules):
      context = context_fn(self.params, text)
      try:
        out = jax.block_until_ready(sampler_lib.sample(
            logits_fn, rng, place(tokens), cfg, context=context,
            fixed=None if fixed is None else place(fixed),
            sample_index=place(seeds.astype(np.int32))))
      except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError and friends)
        if not oom.is_accelerator_oom(e):
          raise
        raise SamplerOutOfMemoryError(
            _out_of_memory_message(rows, tokens.shape[1:], cfg)) from e
    if jax.process_count() > 1:  # Every process: all rows, as NumPy (one: left on device).
      out = sharding.to_host(out)
    result = {}
    if decode:  # The padded rows too: every process decodes the same number of rows.
      # In fixed chunks: the pixels one process decoding every row would get.
      images = self.decode(np.asarray(out.tokens)[local])
      result["images"] = sharding.gather_rows(self.mesh, images, local, rows)[:n]
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


# Bytes of temporaries the sampler holds per image, token and code: XLA's memory analysis of
# the compiled sampler (guidance and 4 edit passes on, CPU backend) gives 1.07 GB per image at
# 256 tokens and 2^18 codes, as much as four float32 [tokens, codes] arrays per image.
SAMPLER_BYTES_PER_LOGIT = 16


class SamplerOutOfMemoryError(oom.AcceleratorOutOfMemoryError):
  """A sampler batch that does not fit the accelerator: `mdd.main` prints it as one line."""


def _out_of_memory_message(rows: int, grid: tuple[int, ...], cfg) -> str:
  """One line for a sampler batch that does not fit the accelerator; it keeps XLA's
  RESOURCE_EXHAUSTED, which callers that retry at a smaller batch look for."""
  tokens = int(np.prod(grid))
  need = SAMPLER_BYTES_PER_LOGIT * rows * tokens * cfg.mask_id / 2 ** 30
  return (f"sampling {rows} images of {tokens} tokens over {cfg.mask_id} codes ran out of "
          f"accelerator memory (RESOURCE_EXHAUSTED; the sampler holds up to about {need:.0f} GiB "
          "of [batch, tokens, codes] arrays): lower sample.batch_size or the evaluation's "
          "batch_size")


def sampling_mesh(config) -> jax.sharding.Mesh:
  """The train stage's mesh (`config.mesh`) over this job's devices; one line when it does not
  fit them."""
  try:
    return sharding.make_mesh(config.mesh)
  except ValueError as e:
    raise ValueError(f"sampling runs on the train stage's mesh (config.mesh): {e}; set "
                     "--config.mesh.* to fit this job") from None


_LOGITS_FNS: dict = {}
_CONTEXT_FNS: dict = {}


def _model_key(system, config) -> tuple:
  """What fixes the model function: the config sections `system_from_config` reads and the
  vocabulary (the neighbour table only enters the loss; the parameters arrive through the
  sampler's `context`)."""
  sections = {k: config[k].to_dict() for k in ("denoiser", "text", "masking", "loss")
              if k in config}
  return json.dumps(sections, sort_keys=True, default=str), int(system.denoiser.vocab_size)


def _cached_logits_fn(system, config, grid_shape, mesh, rules):
  # The sampler is jitted with logits_fn static: one function object per model function + grid,
  # so repeated calls hit the compilation cache, also across Generators of the same run (the
  # pipeline's sample and eval stages each restore one). The mesh and the rules are in the key
  # too: the activations' sharding constraints are traced from them.
  key = (*_model_key(system, config), tuple(grid_shape), mesh, tuple(rules))
  if key not in _LOGITS_FNS:
    _LOGITS_FNS[key] = system.logits_fn(tuple(grid_shape))
  return _LOGITS_FNS[key]


def _cached_context_fn(system, config, mesh, rules):
  """jit(params, text batch -> the sampler's `context`): `system.sampling_context` for a text
  batch that is already a global array split over the batch axes."""
  key = (*_model_key(system, config), mesh, tuple(rules))
  if key not in _CONTEXT_FNS:
    def context_fn(params, batch):
      text, text_mask = system.encode_text(params, batch)
      return {"params": params, "text": text, "text_mask": text_mask}
    _CONTEXT_FNS[key] = jax.jit(context_fn)
  return _CONTEXT_FNS[key]


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
