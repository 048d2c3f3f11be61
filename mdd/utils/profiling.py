"""Reads the trace `jax.profiler` writes into a table of time per op (kernel) name.

  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    ...                                        # the steps to measure, then block_until_ready
  times = profiling.trace_kernel_times(trace_dir)   # {op name: ms summed over the trace}

On GPU / TPU the ops are the device kernels (device time). On XLA CPU they are the compiled ops
run on the XLA threads of the host process, in thread time summed over the cores that ran them
(so the total can exceed the wall time). Used by `mdd.bench.gce --profile` and
`mdd.experiments.speed --profile`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os

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
