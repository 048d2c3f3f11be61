"""One test of "the accelerator ran out of memory" for the sampler, the ablation and benchmarks."""

from mdd.utils import oom


def test_accelerator_oom_is_recognised_by_either_wording_and_a_host_memory_error_is_not():
  assert oom.is_accelerator_oom(RuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 32.02GiB"))
  # XLA's GPU allocator, without the status code.
  assert oom.is_accelerator_oom(RuntimeError("Out of memory while trying to allocate 68.7GiB"))
  assert oom.is_accelerator_oom(RuntimeError("INTERNAL: failed: CUDA_ERROR_OUT_OF_MEMORY: "
                                             "out of memory"))
  assert not oom.is_accelerator_oom(MemoryError())
  assert not oom.is_accelerator_oom(ValueError("shape mismatch: (8, 256) vs (8, 1024)"))
