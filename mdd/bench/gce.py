"""Benchmark of the fused GCE: kernels vs XLA, chunked XLA, Cut Cross-Entropy, Liger.

  python -m mdd.bench.gce --points=target --out=benchmarks/gce_h200.json
  python -m mdd.bench.gce --points=sweep --skip_tuning --out=...
  python -m mdd.bench.gce --profile --jax_impls=pallas_gpu,chunked --reps=3 \
      --out=...   # per-kernel device time of one fwd+bwd at the target (profiler trace)
  python -m mdd.bench.gce --check=pallas_gpu   # kernels vs the float64 reference

Run on the GPU machine (the peers need torch, triton and the `cut-cross-entropy` /
`liger-kernel` wheels; `--interpret` is a CPU dry run of the kernels).

What it measures, per point (N, D, V, K), bf16 inputs, soft GCE with ce_mix=0:
- median forward and forward+backward wall time (device-synchronised, after warm-up);
- TFLOP/s counting 2NVD (forward) and 8NVD (forward + backward with recompute);
- memory above the inputs: JAX = compiled temp + output bytes (`memory_analysis`), torch =
  `max_memory_allocated` minus the allocation before the call (outputs included in both);
- error vs an fp32 reference (fp32 inputs upcast, `precision=highest`, materialised or chunked):
  relative L2 error of the loss, and of dx / dw at the target point;
- the roofline: XLA's bf16 matmul rate (8192^3) measured in the same run.
The JAX part and the torch part run in separate processes (JAX preallocates GPU memory); each
process compares against its own fp32 reference on its own random inputs.

This module: the JAX timing (`run_jax`, `run_profile`, `run_check`), the block-size autotuner
(`_tune_kernels`) and the CLI; the torch peers are `mdd.bench.gce_torch`, the profiler-trace
parser `mdd.utils.profiling`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from mdd.bench import gce_torch
from mdd.utils import profiling

TARGET = (32768, 2048, 1 << 18, 16)
SWEEP = [(n, d, v, k) for n in (8192, 32768) for d in (2048, 4096) for v in (1 << 17, 1 << 18)
         for k in (1, 16, 32)]

# Forward-kernel (linear_lse) variants timed at the target point before the end-to-end runs.
FWD_VARIANTS = [
    dict(block_n=128, block_v=256, block_k=64, num_warps=8, num_stages=3),
    dict(block_n=128, block_v=256, block_k=128, num_warps=8, num_stages=2),
    dict(block_n=128, block_v=256, block_k=64, num_warps=8, num_stages=3, num_splits=2),
    dict(block_n=256, block_v=128, block_k=64, num_warps=8, num_stages=3),
]
# softmax_chunk variants, timed on all N rows x one default vocabulary block.
BWD_VARIANTS = [
    dict(block_n=128, block_v=256, block_k=64, num_warps=8, num_stages=3, group_rows=16),
    dict(block_n=128, block_v=256, block_k=64, num_warps=8, num_stages=3, group_rows=8),
    dict(block_n=128, block_v=256, block_k=64, num_warps=8, num_stages=3, group_rows=32),
    dict(block_n=256, block_v=128, block_k=64, num_warps=8, num_stages=3, group_rows=8),
    dict(block_n=128, block_v=256, block_k=128, num_warps=8, num_stages=2, group_rows=16),
]


def _median_ms(fn, reps: int, warmup: int = 2) -> float:
  from mdd.bench import rates  # pylint: disable=import-outside-toplevel
  return 1e3 * rates.median_seconds(fn, reps, warmup)


def _flops(n, d, v, passes):
  return passes * n * v * d


# ------------------------------------------------------------------------------------------------
# JAX part.


def _jax_inputs(n, d, v, k, seed, dtype):
  import jax
  import jax.numpy as jnp
  keys = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
  # Logit scale ~ a few units, like a trained head (std(z) ~ 2).
  w = (jax.random.normal(keys[1], (v, d), jnp.float32) * (2.0 / d ** 0.5)).astype(dtype)
  labels = jax.random.randint(keys[2], (n,), 0, v)
  nbr = jax.random.randint(keys[3], (v, k), 0, v)
  nbr = nbr.at[:, 0].set(jnp.arange(v))
  nw = jax.random.uniform(keys[4], (v, k), jnp.float32)
  return x, w, labels, nbr, nw


def _rel(a, b):
  import jax.numpy as jnp
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def _compiled_bytes(jitted, *args):
  """(temp + output bytes, temp bytes) from XLA's compiled memory analysis."""
  try:
    analysis = jitted.lower(*args).compile().memory_analysis()
    return (int(analysis.temp_size_in_bytes + analysis.output_size_in_bytes),
            int(analysis.temp_size_in_bytes))
  except Exception:  # pylint: disable=broad-except
    return None, None


def _matmul_roofline(reps, size=8192):
  """XLA bf16 matmul rate (TFLOP/s), size^3, after >= 2 s of warm-up so the clocks are up."""
  from mdd.bench import rates  # pylint: disable=import-outside-toplevel
  return rates.gemm_rate(size, reps=max(reps, 20)) / 1e12


def _problem_gemm_rate(n, d, v, reps):
  """XLA bf16 rate of [4096, D] x [D, V] (the logits GEMM of one row block), queued launches."""
  import jax
  import jax.numpy as jnp
  rows = min(n, 4096)
  a = jax.random.normal(jax.random.key(3), (rows, d), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(4), (v, d), jnp.bfloat16)
  mm = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ()))))
  mm(a, b).block_until_ready()
  from mdd.bench import rates  # pylint: disable=import-outside-toplevel
  return 2 * rows * d * v / rates.queued_seconds(lambda: mm(a, b), reps) / 1e12


def _tune_kernels(x, w, reps, log, interpret=False):
  """Times the two kernels alone at the target point; returns the best configs."""
  import jax
  import jax.numpy as jnp
  from pallas_kernels.gce import gpu
  n, d = x.shape
  v = w.shape[0]
  ref_lse = jax.jit(lambda x, w: jax.nn.logsumexp(
      jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32),
      axis=1))(x, w)
  rows = []
  best_fwd = None
  for cfg in FWD_VARIANTS:
    try:
      fn = jax.jit(lambda x, w, cfg=cfg: gpu.linear_lse(x, w, vocab=v, interpret=interpret,
                                                              **cfg))
      out = fn(x, w).block_until_ready()
      err = _rel(out, ref_lse)
      ms = _median_ms(lambda: fn(x, w).block_until_ready(), reps)
      row = dict(kernel="linear_lse", config=cfg, ms=ms, tflops=_flops(n, d, v, 2) / ms / 1e9,
                 rel_err_vs_xla=err)
      if err < 1e-4 and (best_fwd is None or ms < best_fwd[1]):
        best_fwd = (cfg, ms)
    except Exception as e:  # pylint: disable=broad-except
      row = dict(kernel="linear_lse", config=cfg, error=repr(e)[:400])
    log(row)
    rows.append(row)
  from pallas_kernels.gce import chunked as chunked_lib
  vocab_chunk, _ = chunked_lib.vocab_chunking(v, n, 256, x.dtype.itemsize, None)
  w_block = w[:vocab_chunk]
  g = jnp.ones((n,), jnp.float32)
  best_bwd = None
  for cfg in BWD_VARIANTS:
    try:
      fn = jax.jit(lambda x, w, lse, g, cfg=cfg: gpu.softmax_chunk(
          x, w, lse, g, interpret=interpret, **cfg))
      ms = _median_ms(lambda: fn(x, w_block, ref_lse, g).block_until_ready(), reps)
      row = dict(kernel="softmax_chunk", vocab_chunk=vocab_chunk, config=cfg, ms=ms,
                 tflops=_flops(n, d, vocab_chunk, 2) / ms / 1e9)
      if best_bwd is None or ms < best_bwd[1]:
        best_bwd = (cfg, ms)
    except Exception as e:  # pylint: disable=broad-except
      row = dict(kernel="softmax_chunk", config=cfg, error=repr(e)[:400])
    log(row)
    rows.append(row)
  return rows, (best_fwd[0] if best_fwd else None), (best_bwd[0] if best_bwd else None)


def _gpu_blocks(fwd_cfg, bwd_cfg):
  blocks = {}
  if fwd_cfg:
    blocks.update({k: v for k, v in fwd_cfg.items() if k != "splits_fastest"})
  if bwd_cfg:
    blocks.update(bwd_block_n=bwd_cfg["block_n"], bwd_block_v=bwd_cfg["block_v"],
                  bwd_block_k=bwd_cfg["block_k"], bwd_num_warps=bwd_cfg["num_warps"],
                  bwd_num_stages=bwd_cfg["num_stages"], bwd_group_rows=bwd_cfg["group_rows"])
  return blocks


def run_jax(points, reps, impls, tune, grad_errors_at_target, log, gpu_blocks=None,
            interpret=False):
  import jax
  import jax.numpy as jnp
  from pallas_kernels.gce import fused_gce
  results = dict(jax_version=jax.__version__, device=str(jax.devices()[0].device_kind),
                 backend=jax.default_backend())
  roof_size = 256 if interpret else 8192
  results["matmul_bf16_tflops"] = _matmul_roofline(reps, roof_size)
  log(dict(matmul_bf16_tflops=results["matmul_bf16_tflops"]))
  gpu_blocks = dict(gpu_blocks or {})
  results["points"] = []
  for point_index, (n, d, v, k) in enumerate(points):
    x, w, labels, nbr, nw = _jax_inputs(n, d, v, k, seed=point_index, dtype=jnp.bfloat16)
    if tune and point_index == 0:
      rows, fwd_cfg, bwd_cfg = _tune_kernels(x, w, reps, log, interpret)
      results["tuning"] = rows
      gpu_blocks = _gpu_blocks(fwd_cfg, bwd_cfg)
      results["gpu_blocks"] = gpu_blocks
      log(dict(chosen_gpu_blocks=gpu_blocks))
    is_target = (n, d, v, k) == TARGET or point_index == 0
    if not interpret:
      results.setdefault("problem_gemm_bf16_tflops", {})[f"{n},{d},{v}"] = _problem_gemm_rate(
          n, d, v, reps)
    # fp32 reference: upcast inputs, full-precision matmuls; materialised when it fits.
    with jax.default_matmul_precision("highest"):
      ref_impl = "xla" if n * v * 4 <= (40 << 30) else "chunked"
      ref_loss_fn = jax.jit(lambda x, w: fused_gce(
          x.astype(jnp.float32), w.astype(jnp.float32), labels, nbr, nw, impl=ref_impl))
      ref_loss = ref_loss_fn(x, w).block_until_ready()
      ref_grads = None
      if grad_errors_at_target and is_target:
        ref_grads = jax.jit(jax.grad(lambda x, w: fused_gce(
            x.astype(jnp.float32), w.astype(jnp.float32), labels, nbr, nw,
            impl="chunked").sum(), argnums=(0, 1)))(x, w)
        jax.block_until_ready(ref_grads)
    for impl in impls:
      blocks = gpu_blocks if impl == "pallas_gpu" else {}
      row = dict(point=dict(N=n, D=d, V=v, K=k), impl=impl, blocks=blocks)
      loss_fn = jax.jit(lambda x, w, impl=impl, blocks=blocks: fused_gce(
          x, w, labels, nbr, nw, impl=impl, interpret=interpret, **blocks))
      grad_fn = jax.jit(jax.value_and_grad(lambda x, w, impl=impl, blocks=blocks: fused_gce(
          x, w, labels, nbr, nw, impl=impl, interpret=interpret, **blocks).sum(),
          argnums=(0, 1)))
      try:
        row["fwd_extra_bytes"], row["fwd_temp_bytes"] = _compiled_bytes(loss_fn, x, w)
        loss = loss_fn(x, w).block_until_ready()
        row["loss_rel_err"] = _rel(loss, ref_loss)
        row["fwd_ms"] = _median_ms(lambda: loss_fn(x, w).block_until_ready(), reps)
        row["fwd_tflops"] = _flops(n, d, v, 2) / row["fwd_ms"] / 1e9
      except Exception as e:  # pylint: disable=broad-except
        row["fwd_error"] = repr(e)[:400]
      try:
        row["fwdbwd_extra_bytes"], row["fwdbwd_temp_bytes"] = _compiled_bytes(grad_fn, x, w)
        _, grads = grad_fn(x, w)
        jax.block_until_ready(grads)
        if ref_grads is not None:
          row["dx_rel_err"] = _rel(grads[0], ref_grads[0])
          row["dw_rel_err"] = _rel(grads[1], ref_grads[1])
        del grads
        row["fwdbwd_ms"] = _median_ms(lambda: jax.block_until_ready(grad_fn(x, w)), reps)
        row["fwdbwd_tflops"] = _flops(n, d, v, 8) / row["fwdbwd_ms"] / 1e9
      except Exception as e:  # pylint: disable=broad-except
        row["fwdbwd_error"] = repr(e)[:400]
      roof = results["matmul_bf16_tflops"]
      if "fwd_tflops" in row:
        row["fwd_frac_roofline"] = row["fwd_tflops"] / roof
      if "fwdbwd_tflops" in row:
        row["fwdbwd_frac_roofline"] = row["fwdbwd_tflops"] / roof
      log(row)
      results["points"].append(row)
    del x, w, ref_loss, ref_grads
  results["matmul_bf16_tflops_end"] = _matmul_roofline(reps, roof_size)
  log(dict(matmul_bf16_tflops_end=results["matmul_bf16_tflops_end"]))
  return results


def run_check(impl: str, interpret: bool = False, log=print) -> bool:
  """Kernel vs the float64 reference on small ragged shapes, both modes, bf16 and f32 inputs."""
  import jax
  import numpy as np
  from pallas_kernels.gce import fused_gce, gce_reference
  ok = True
  cases = [(300, 200, 1000, 5, "soft", 0.0, np.float32), (300, 200, 1000, 5, "marginal", 0.25,
           np.float32), (1024, 256, 4096, 16, "soft", 0.1, jax.numpy.bfloat16),
           (777, 128, 3000, 32, "marginal", 0.0, jax.numpy.bfloat16)]
  for case_index, (n, d, v, k, mode, ce_mix, dtype) in enumerate(cases):
    rng = np.random.default_rng(case_index)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = (rng.normal(size=(v, d)) * 2.0 / np.sqrt(d)).astype(np.float32)
    x, w = np.asarray(jax.numpy.asarray(x, dtype), np.float32), np.asarray(
        jax.numpy.asarray(w, dtype), np.float32)   # round to dtype so both see the same inputs
    labels = rng.integers(-1, v, n)
    nbr = rng.integers(0, v, (v, k))
    nbr[rng.random((v, k)) < 0.3] = -1
    nbr[:, 0] = np.arange(v)
    nw = rng.random((v, k)).astype(np.float32)
    valid = rng.random(n) > 0.1
    ref_loss, ref_dx, ref_dw = gce_reference(x, w, labels, nbr, nw, mode=mode, ce_mix=ce_mix,
                                             valid=valid)
    fn = lambda x, w: fused_gce(x, w, labels, nbr, nw, mode=mode, ce_mix=ce_mix, valid=valid,
                                impl=impl, interpret=interpret)
    xj, wj = jax.numpy.asarray(x, dtype), jax.numpy.asarray(w, dtype)
    loss = fn(xj, wj)
    dx, dw = jax.grad(lambda x, w: fn(x, w).sum(), argnums=(0, 1))(xj, wj)
    errs = dict(loss=float(np.linalg.norm(np.asarray(loss) - ref_loss) / np.linalg.norm(ref_loss)),
                dx=float(np.linalg.norm(np.asarray(dx, np.float64) - ref_dx) / np.linalg.norm(ref_dx)),
                dw=float(np.linalg.norm(np.asarray(dw, np.float64) - ref_dw) / np.linalg.norm(ref_dw)))
    tol = 1e-4 if dtype == np.float32 else 2e-2
    passed = all(e < tol for e in errs.values()) and bool(np.all(np.asarray(loss)[~valid] == 0))
    ok &= passed
    log(dict(check=impl, case=[n, d, v, k, mode, ce_mix, np.dtype(dtype).name], rel_err=errs,
             tol=tol, passed=passed))
  return ok


def run_profile(point, impls, reps, log, gpu_blocks=None):
  """Per-kernel device time of one forward+backward at `point`, from a profiler trace."""
  import tempfile
  import jax
  import jax.numpy as jnp
  from pallas_kernels.gce import fused_gce
  n, d, v, k = point
  x, w, labels, nbr, nw = _jax_inputs(n, d, v, k, seed=0, dtype=jnp.bfloat16)
  results = dict(point=dict(N=n, D=d, V=v, K=k), reps=reps, impls={})
  for impl in impls:
    blocks = dict(gpu_blocks or {}) if impl == "pallas_gpu" else {}
    grad_fn = jax.jit(jax.value_and_grad(lambda x, w, impl=impl, blocks=blocks: fused_gce(
        x, w, labels, nbr, nw, impl=impl, **blocks).sum(), argnums=(0, 1)))
    jax.block_until_ready(grad_fn(x, w))
    with tempfile.TemporaryDirectory() as trace_dir:
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(reps):
          out = grad_fn(x, w)
        jax.block_until_ready(out)
      totals = profiling.trace_kernel_times(trace_dir)
    per_step = {name: ms / reps for name, ms in totals.items()}
    top = sorted(per_step.items(), key=lambda kv: -kv[1])
    row = dict(impl=impl, device_ms_per_step=sum(per_step.values()),
               kernels=[dict(name=name[:160], ms=ms) for name, ms in top[:25]])
    log(row)
    results["impls"][impl] = row
  return results


# ------------------------------------------------------------------------------------------------
# CLI.


def _log_to(path):
  def log(row):
    line = json.dumps(row, default=str)
    print(line, flush=True)
    if path:
      with open(path, "a") as f:
        f.write(line + "\n")
  return log


def _points(name):
  if name == "target":
    return [TARGET]
  if name == "sweep":
    return SWEEP
  if name == "sweep_k16":
    return [p for p in SWEEP if p[3] == 16 and p != TARGET]
  if name == "sweep_k1_32":
    return [p for p in SWEEP if p[3] != 16]
  if name == "final":   # benchmarks/gce_h200_final.json: the target, D=4096, K=1 and K=32.
    return [TARGET, (32768, 4096, 1 << 17, 16), (32768, 4096, 1 << 18, 16),
            (32768, 2048, 1 << 18, 1),
            (32768, 2048, 1 << 18, 32)]
  if name == "tiny":
    return [(512, 256, 4096, 16)]
  # Explicit list "N,D,V,K;N,D,V,K".
  return [tuple(int(t) for t in item.split(",")) for item in name.split(";")]


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m mdd.bench.gce",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--points", default="target")
  parser.add_argument("--part", default="all", choices=("all", "jax", "torch", "none"))
  parser.add_argument("--jax_impls", default="pallas_gpu,chunked,xla")
  parser.add_argument("--torch_impls", default="cce,cce_exact,liger")
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--skip_tuning", action="store_true")
  parser.add_argument("--blocks", default="", help="JSON dict of pallas_gpu block sizes")
  parser.add_argument("--no_grad_errors", action="store_true")
  parser.add_argument("--interpret", action="store_true", help="CPU dry run of the kernels")
  parser.add_argument("--check", default="", help="impl to check vs the float64 reference")
  parser.add_argument("--profile", action="store_true",
                      help="per-kernel device times of fwd+bwd at the first point (trace)")
  parser.add_argument("--out", default="benchmarks/gce_bench.json")
  parser.add_argument("--log", default="")
  args = parser.parse_args(argv)
  if args.check:
    sys.exit(0 if run_check(args.check, args.interpret, _log_to(args.log)) else 1)
  points = _points(args.points)
  log = _log_to(args.log)
  results = {}
  if args.profile:
    results["profile"] = run_profile(points[0], args.jax_impls.split(","), args.reps, log,
                                     json.loads(args.blocks) if args.blocks else None)
    args.part = "none"
  if args.part in ("all", "jax"):
    jax_results = run_jax(points, args.reps, args.jax_impls.split(","), not args.skip_tuning,
                          not args.no_grad_errors, log,
                          gpu_blocks=json.loads(args.blocks) if args.blocks else None,
                          interpret=args.interpret)
    results["jax"] = jax_results
  if args.part == "all" and args.torch_impls:
    # Fresh process: JAX keeps its preallocated GPU memory for its lifetime.
    torch_out = args.out + ".torch.json"
    cmd = [sys.executable, "-m", "mdd.bench.gce", "--part=torch",
           f"--points={args.points}", f"--torch_impls={args.torch_impls}",
           f"--reps={args.reps}", f"--out={torch_out}", f"--log={args.log}"]
    subprocess.run(cmd, check=False)
    if os.path.exists(torch_out):
      with open(torch_out) as f:
        results["torch"] = json.load(f)["torch"]
  if args.part == "torch":
    results["torch"] = gce_torch.run_torch(points, args.reps, args.torch_impls.split(","), log)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1, default=str)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
