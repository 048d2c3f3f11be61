"""Recognising an accelerator's out-of-memory error (JAX-free: the ablation's parent uses it).

XLA raises it as an `XlaRuntimeError` whose text carries the status `RESOURCE_EXHAUSTED`; some
allocators (the GPU's BFC allocator, a compiled program's scratch) say "Out of memory while
trying to allocate ..." instead. A host `MemoryError` has neither and is not one.
"""

from __future__ import annotations


class AcceleratorOutOfMemoryError(MemoryError):
  """A setting too large for the accelerator (a user's batch, not the host's memory running
  out): `mdd.main` prints it as one line, where a host `MemoryError` keeps its traceback."""


def is_accelerator_oom(error: BaseException) -> bool:
  """Whether `error` is the accelerator running out of memory."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
