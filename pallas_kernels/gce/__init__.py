"""Fused Grouped Cross-Entropy (GCE): the public entry point and its float64 reference.

`fused_gce` computes per-token GCE losses with XLA, a row-chunked pure-JAX path, or Pallas
kernels for GPU (Triton lowering) and TPU (Mosaic); `gce_reference` is the NumPy ground truth;
`sharded_fused_gce` runs the fused paths on a device mesh (`shard_map`, rows x vocabulary).
"""

from pallas_kernels.gce.api import IMPLS, MODES, fused_gce, resolve_impl
from pallas_kernels.gce.reference import gce_reference
from pallas_kernels.gce.sharded import sharded_fused_gce

__all__ = ["IMPLS", "MODES", "fused_gce", "gce_reference", "resolve_impl", "sharded_fused_gce"]
