"""Reads the trace `jax.profiler` writes into a table of time per op (kernel) name.

  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    ...                                        # the steps to measure, then block_until_ready
  times = profiling.trace_kernel_times(trace_dir)   # {op name: ms summed over the trace}

On GPU / TPU the ops are the device kernels (device time). On XLA CPU they are the compiled ops
run on the XLA threads of the host process, in thread time summed over the cores that ran them
(so the total can exceed the wall time). `profile_steps` traces a step function and sums per step, by kernel, by kind (the name
without its instance number) and by category (`kernel_category`). Used by `mdd.bench.gce`,
`mdd.bench.train_step` and `mdd.experiments.speed`, each with `--profile`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any, Callable

# Events on XLA CPU threads that are scheduling or waiting, not ops.
_CPU_BOOKKEEPING = ("ThunkExecutor", "ThreadPool", "Threadpool", "end: ", "Wait:", "Rendezvous",
                    "PjRt")


def load_trace_events(trace_dir: str) -> list[dict]:
  """The events of the newest `perfetto_trace.json.gz` under `trace_dir`."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True))
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1], "rt") as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def op_times(events: list[dict]) -> dict[str, float]:
  """Time (ms) by op name: device processes if the trace has any, else the XLA CPU threads."""
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in names.items()
                 if "/device:GPU" in name or "/device:TPU" in name}
  if device_pids:
    keep = lambda e: e.get("pid") in device_pids  # noqa: E731
  else:
    # XLA CPU: the compiled ops run on the XLA threads of the host process; their times are
    # thread time, summed over the cores that ran them. Scheduling events are not ops.
    threads = {(e["pid"], e["tid"]) for e in events if e.get("ph") == "M"
               and e.get("name") == "thread_name"
               and e.get("args", {}).get("name", "").startswith("tf_XLA")}
    if not threads:
      raise ValueError(f"no device process or XLA CPU thread in the trace; processes: "
                       f"{sorted(names.values())}")
    keep = lambda e: ((e.get("pid"), e.get("tid")) in threads  # noqa: E731
                      and not any(b in e["name"] for b in _CPU_BOOKKEEPING))
  totals: dict[str, float] = {}
  for e in events:
    if e.get("ph") == "X" and "dur" in e and keep(e):
      totals[e["name"]] = totals.get(e["name"], 0.0) + e["dur"] / 1e3
  return totals


def trace_kernel_times(trace_dir: str) -> dict[str, float]:
  """Device-kernel time (ms) by kernel name from the Perfetto trace jax.profiler wrote."""
  return op_times(load_trace_events(trace_dir))


# Kernel name patterns -> category, first match wins (cuBLAS/cuDNN/Triton names on GPU, XLA's
# fusion names everywhere). Pallas kernels keep the Python function's name.
_CATEGORIES = (
    ("attention (cuDNN)", r"cudnn|fmha|flash"),
    ("fused GCE (Pallas)", r"gce|_lse|softmax_grad"),
    ("matmul", r"gemm|cutlass|nvjet|xmma|sm90|dot|matmul|cublas|convolution"),
    ("copy / transpose", r"copy|transpose|memcpy|memset|dynamic[-_]update[-_]slice"),
    ("reduction fusion", r"reduce"),
    ("other fusion", r"fusion|loop_|input_|kernel"),
)


def kernel_category(name: str) -> str:
  lowered = name.lower()
  for category, pattern in _CATEGORIES:
    if re.search(pattern, lowered):
      return category
  return "other"


def profile_steps(step: Callable[[int], Any], steps: int, top: int = 20) -> dict:
  """Device ms per step, the top kernels, kinds and categories, from a trace of `steps` calls
  of `step(k)` (the caller warms it up first)."""
  import jax  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for k in range(steps):
        out = step(k)
      jax.block_until_ready(out)
    per_step = {name: ms / steps for name, ms in trace_kernel_times(trace_dir).items()}
  # Kinds: names without their instance number (`loop_add_fusion_13`, `ynn_fusion.387`); on CPU
  # hundreds of small ops share a kind, and the kinds are what says where time goes.
  kinds: dict[str, float] = {}
  categories: dict[str, float] = {}
  for name, ms in per_step.items():
    kind = re.sub(r"[._]\d+$", "", name)
    kinds[kind] = kinds.get(kind, 0.0) + ms
    category = kernel_category(name)
    categories[category] = categories.get(category, 0.0) + ms
  by_time = lambda kv: -kv[1]  # noqa: E731
  return {"device_ms_per_step": sum(per_step.values()),
          "kernels": [{"name": n[:160], "ms": ms}
                      for n, ms in sorted(per_step.items(), key=by_time)[:top]],
          "kinds": [{"kind": k[:160], "ms": ms}
                    for k, ms in sorted(kinds.items(), key=by_time)[:12]],
          "categories": [{"category": c, "ms": ms}
                         for c, ms in sorted(categories.items(), key=by_time)]}
