r"""Where a run's time goes: host batch vs device step, per training stage, and the sampler.

  python -m mdd.experiments.speed --config=configs/shapes_gpu.py [--steps=30] \
      [--stages=tokenizer,denoiser,sampler] [--out=FILE.json] [--set KEY=VALUE ...]

For each stage of the config, at its real sizes (model, batch, vocabulary, loss kernel):
  host_ms   building one host batch as the train loop does (tokenizer: the configured data
            source, cache included; denoiser: token batches gathered from an in-memory shard
            stand-in, the way `TokenShardSource.get_batch` reads them);
  step_ms   one jitted train step on a batch already on the devices (state donated, blocked
            after `--steps` steps);
  loop_ms   the train loop's own pattern over `--steps` steps: host batch, device_put, async
            step; ~max(host_ms, step_ms) when the two overlap, their sum when they do not;
  sampler   ms per batch of `eval.shapes_geneval.batch_size` prompts with the config's sampler.
With `--profile`, a profiler trace of the train steps adds the device time per step, its top
kernels and kernel kinds (the trace parser of `mdd.utils.profiling`); on CPU the ops of the
XLA threads, in thread time summed over cores (so it can exceed the step's wall time). Nothing
is trained to quality (fresh parameters, random neighbour table): the numbers are speed only. A
table goes to stdout and everything to `--out` (JSON, rewritten after each stage) with the
hardware; a stage that fails is recorded under `errors`, the others still run, and the exit
status is non-zero.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mdd import sampling as sampler_lib
from mdd import workdir as workdir_lib
from mdd.data import prompts as prompts_lib
from mdd.experiments import ablate
from mdd.models import system as system_lib
from mdd.train import denoiser as denoiser_task
from mdd.train import loop
from mdd.train import tokenizer as tokenizer_task
from mdd.utils import fileio
from mdd.utils import profiling
from mdd.utils import sharding as sharding_lib


def _timed(fn: Callable[[], Any], repeats: int) -> float:
  """Mean seconds of `fn()` over `repeats` calls (after one warm-up call)."""
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def _measure_task(task, mesh, rules, host_batches: Iterator[dict], steps: int,
                  profile: bool = False) -> dict:
  """host/step/loop milliseconds and compile seconds of one loop Task."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel

  out = {"host_ms": 1e3 * _timed(lambda: next(host_batches), max(steps // 2, 3))}
  _, shardings = loop.abstract_state(task, mesh, rules)
  with sharding_lib.mesh_context(mesh, rules):
    start = time.perf_counter()  # A fresh state as the loop makes one: compile + run.
    state = jax.jit(task.init_state, out_shardings=shardings)(jax.random.key(0))
    jax.block_until_ready(state)
    out["init_s"] = time.perf_counter() - start
    step = loop.jit_train_step(task, shardings, jax.random.key(1))
    batch = sharding_lib.shard_batch(next(host_batches), mesh)
    start = time.perf_counter()
    state, metrics = step(state, batch, np.int32(0))
    jax.block_until_ready(metrics)
    out["compile_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(steps):
      state, metrics = step(state, batch, np.int32(k + 1))
    jax.block_until_ready(metrics)
    out["step_ms"] = 1e3 * (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for k in range(steps):
      batch = sharding_lib.shard_batch(next(host_batches), mesh)
      state, metrics = step(state, batch, np.int32(k + 1))
    jax.block_until_ready(metrics)
    out["loop_ms"] = 1e3 * (time.perf_counter() - start) / steps
    if profile:
      holder = [state]

      def one(k):
        holder[0], metrics = step(holder[0], batch, np.int32(k))
        return metrics

      out["profile"] = profiling.profile_steps(one, steps)
  out["steps_per_s"] = 1e3 / out["loop_ms"]
  out["batch_size"] = int(next(iter(next(host_batches).values())).shape[0])
  return out


def measure_tokenizer(config, mesh, rules, steps: int, profile: bool = False) -> dict:
  task = tokenizer_task.make_task(config)
  return _measure_task(task, mesh, rules, task.make_batches(0), steps, profile)


def _random_table(vocab: int, k: int, rng: np.random.Generator):
  neighbours = np.concatenate([np.arange(vocab)[:, None],
                               rng.integers(0, vocab, (vocab, k - 1))], axis=1)
  weights = np.full((vocab, k), 1.0 / k, np.float32)
  return neighbours.astype(np.int32), weights


def _denoiser_system(config):
  vocab = int(config.tokenizer.model.vocab_size)
  neighbours, weights = _random_table(vocab, int(config.tokenizer.neighbours.k),
                                      np.random.default_rng(0))
  return system_lib.system_from_config(config, vocab_size=vocab, neighbours=neighbours,
                                       neighbour_weights=weights)


def _token_batches(config, batch_size: int) -> Iterator[dict]:
  """Random token batches gathered from an in-memory table, as token shards are read."""
  rng = np.random.default_rng(0)
  vocab, size = int(config.tokenizer.model.vocab_size), 4096
  max_len = int(config.text.max_len)
  table = {"tokens": rng.integers(0, vocab, (size, *workdir_lib.token_grid(config))).astype(np.int32),
           "text_ids": rng.integers(2, 200, (size, max_len)).astype(np.int32),
           "text_len": rng.integers(8, max_len, size).astype(np.int32)}
  while True:
    rows = rng.integers(0, size, batch_size)
    yield {k: v[rows] for k, v in table.items()}


def measure_denoiser(config, mesh, rules, steps: int, profile: bool = False) -> dict:
  system = _denoiser_system(config)
  batch_size = int(config.denoiser_train.batch_size)
  task = denoiser_task.make_task(config, system, lambda _: _token_batches(config, batch_size))
  return _measure_task(task, mesh, rules, task.make_batches(0), steps, profile)


def measure_sampler(config, repeats: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  system = _denoiser_system(config)
  params = jax.jit(system.init_params)(jax.random.key(0))
  batch = int(config.eval.shapes_geneval.batch_size)
  prompts = [m["prompt"] for m in prompts_lib.load_prompts("main")][:batch]
  prompts += prompts[:batch - len(prompts)]
  grid = workdir_lib.token_grid(config)
  cfg = sampler_lib.SamplerConfig.from_config(config.sampler, mask_id=system.denoiser.mask_id)
  logits_fn = system.logits_fn(grid)
  tokens = jnp.full((batch, *grid), system.denoiser.mask_id, jnp.int32)

  def one():
    context = system.sampling_context(params, prompts)
    jax.block_until_ready(sampler_lib.sample(logits_fn, jax.random.key(0), tokens, cfg,
                                             context=context).tokens)

  start = time.perf_counter()
  one()
  compile_s = time.perf_counter() - start
  seconds = _timed(one, repeats)
  return {"batch_size": batch, "num_steps": int(config.sampler.num_steps),
          "compile_s": compile_s, "batch_ms": 1e3 * seconds,
          "images_per_s": batch / seconds}


def _table(results: dict) -> str:
  lines = ["stage      batch  host ms  step ms  loop ms  steps/s  init s  compile s",
           "---------  -----  -------  -------  -------  -------  ------  ---------"]
  for name in ("tokenizer", "denoiser"):
    if name in results:
      r = results[name]
      lines.append(f"{name:<9}  {r['batch_size']:>5}  {r['host_ms']:>7.2f}  {r['step_ms']:>7.2f}"
                   f"  {r['loop_ms']:>7.2f}  {r['steps_per_s']:>7.1f}  {r['init_s']:>6.1f}"
                   f"  {r['compile_s']:>9.1f}")
  for name in ("tokenizer", "denoiser"):
    profile = results.get(name, {}).get("profile")
    if profile:
      lines.append(f"{name} device time {profile['device_ms_per_step']:.2f} ms/step; top kernels:")
      lines += [f"  {k['ms']:8.2f} ms  {k['name'][:100]}" for k in profile["kernels"][:10]]
      lines.append(f"{name} by kind:")
      lines += [f"  {k['ms']:8.2f} ms  {k['kind'][:100]}" for k in profile.get("kinds", [])[:8]]
  if "sampler" in results:
    r = results["sampler"]
    lines.append(f"sampler: {r['batch_size']} prompts x {r['num_steps']} steps in "
                 f"{r['batch_ms']:.1f} ms ({r['images_per_s']:.0f} images/s, compile "
                 f"{r['compile_s']:.1f} s)")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(prog="python -m mdd.experiments.speed",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/shapes_gpu.py")
  parser.add_argument("--stages", default="tokenizer,denoiser,sampler")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--out", default="")
  parser.add_argument("--profile", action="store_true",
                      help="also trace the train steps: device ms per step and top kernels")
  parser.add_argument("--workdir", default="",
                      help="where a relative data.cache_dir goes (default: a temporary folder)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  args = parser.parse_args(argv)
  config = ablate.load_config(args.config, dict(ablate.parse_set(s) for s in args.set))
  if config.data.get("cache_dir") and not os.path.isabs(config.data.cache_dir):
    config.data.cache_dir = os.path.join(args.workdir or tempfile.mkdtemp(prefix="mdd_speed_"),
                                         config.data.cache_dir)
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  unknown = set(stages) - {"tokenizer", "denoiser", "sampler"}
  if unknown:
    raise SystemExit(f"speed: unknown stages {sorted(unknown)}")

  import jax  # pylint: disable=import-outside-toplevel
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config)
  devices = jax.devices()
  results: dict[str, Any] = {
      "config": args.config, "overrides": args.set, "steps": args.steps,
      "hardware": f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
                  f"{os.cpu_count()} CPU cores, jax {jax.__version__}"}
  failed = []
  for stage in stages:
    try:
      if stage == "sampler":
        results[stage] = measure_sampler(config, max(args.steps // 10, 2))
      else:
        measure = measure_tokenizer if stage == "tokenizer" else measure_denoiser
        results[stage] = measure(config, mesh, rules, args.steps, args.profile)
    except Exception as error:  # pylint: disable=broad-except
      # One stage's failure is recorded, and the others still measured.
      results.setdefault("errors", {})[stage] = f"{type(error).__name__}: {error}"
      failed.append(stage)
    print(f"[speed] {stage}: {results.get(stage, results.get('errors', {}).get(stage))}",
          flush=True)
    if args.out:
      fileio.write_json_atomic(args.out, results)
  print(results["hardware"])
  print(_table(results), flush=True)
  if failed:
    raise SystemExit(f"speed: stages {failed} failed: {results['errors']}")


if __name__ == "__main__":
  main()
