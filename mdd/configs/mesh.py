"""Default mesh and logical-axis rules (`config.mesh`, `config.sharding_rules`).

Plain data, no JAX import, so configs stay cheap to load; `mdd.sharding` reads the same table.
"""

import ml_collections

# Logical axis -> mesh axes (weights, then activations); None = replicated.
DEFAULT_RULES = (
    # Weights.
    ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", None),
    ("vocab", "tensor"), ("conv_in", None), ("conv_out", "tensor"), ("codebook", None),
    ("layers", None),  # the stacked blocks of `denoiser.scan_layers`
    # Activations.
    ("act_batch", ("data", "fsdp")), ("act_len", None), ("act_embed", None),
    ("act_heads", "tensor"), ("act_vocab", "tensor"),
)


def default_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """(data, fsdp, tensor) sizes, one may be -1; dcn_* split axes across slices or hosts."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, dcn_data=1,
                                        dcn_fsdp=1, dcn_tensor=1))
