"""Mesh from config and logical-axis rules on 8 fake CPU devices (a 2x2x2 mesh)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mdd.utils import sharding


def _cfg(**sizes):
  base = dict(data=-1, fsdp=1, tensor=1)
  base.update(sizes)
  return ml_collections.ConfigDict(base)


def test_mesh_sizes_and_minus_one():
  mesh = sharding.make_mesh(_cfg(data=2, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  mesh = sharding.make_mesh(_cfg(data=-1, fsdp=1, tensor=2))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_mesh_that_does_not_fit_is_a_clear_error():
  with pytest.raises(ValueError, match="need 12 devices but 8 are available"):
    sharding.make_mesh(_cfg(data=3, fsdp=2, tensor=2))
  with pytest.raises(ValueError, match="do not divide 8 devices"):
    sharding.make_mesh(_cfg(data=-1, fsdp=3))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh(_cfg(data=-1, fsdp=-1))


def test_multislice_mesh_splits_devices_into_slices():
  # 2 "slices" of 4 devices: dcn_data=2 doubles the data axis across slices.
  ici, dcn = sharding.mesh_shape(_cfg(data=-1, fsdp=2, tensor=1, dcn_data=2), 8, num_slices=2)
  assert ici == (2, 2, 1) and dcn == (2, 1, 1)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    dense = lambda names, shape: self.param(  # noqa: E731
        "_".join(names), nn.with_logical_partitioning(nn.initializers.normal(), names), shape)
    w_in = dense(("embed", "mlp"), (x.shape[-1], 32))
    w_qkv = dense(("embed", "heads", "kv"), (x.shape[-1], 4, 8))
    w_vocab = dense(("vocab", "embed"), (64, x.shape[-1]))
    conv = dense(("conv_in", "conv_out"), (16, 8))
    codebook = dense(("codebook", "embed"), (32, x.shape[-1]))
    h = x @ w_in
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "mlp"))
    return h.sum() + w_qkv.sum() + w_vocab.sum() + conv.sum() + codebook.sum()


def test_weights_get_expected_partition_specs_on_2x2x2():
  mesh = sharding.make_mesh(_cfg(data=2, fsdp=2, tensor=2))
  init = lambda rng: _Block().init(rng, jnp.ones((4, 6, 16)))  # noqa: E731
  state, shardings = sharding.create_sharded_state(init, mesh, sharding.DEFAULT_RULES,
                                                   jax.random.key(0))
  specs = {k: v.value.sharding.spec for k, v in state["params"].items()}
  assert specs == {
      "embed_mlp": P("fsdp", "tensor"),
      "embed_heads_kv": P("fsdp", "tensor", None),
      "vocab_embed": P("tensor", "fsdp"),
      "conv_in_conv_out": P(None, "tensor"),
      "codebook_embed": P(None, "fsdp"),
  }
  # Each device holds exactly its shard.
  shard = state["params"]["embed_mlp"].value.addressable_shards[0].data
  assert shard.shape == (8, 16)


def test_indivisible_dimension_falls_back_to_replication():
  mesh = sharding.make_mesh(_cfg(data=2, fsdp=2, tensor=2))
  init = lambda rng: {"w": nn.LogicallyPartitioned(  # noqa: E731
      jax.random.normal(rng, (16, 3)), ("conv_in", "conv_out"))}
  state, _ = sharding.create_sharded_state(init, mesh, sharding.DEFAULT_RULES, jax.random.key(1))
  assert state["w"].value.sharding.spec == P(None, None)


def test_shard_batch_splits_the_leading_dim_over_data_and_fsdp():
  mesh = sharding.make_mesh(_cfg(data=2, fsdp=2, tensor=2))
  host = {"tokens": np.arange(8 * 5).reshape(8, 5).astype(np.int32),
          "caption": np.array(["x"] * 8)}
  batch = sharding.shard_batch(host, mesh)
  assert set(batch) == {"tokens"}  # strings never enter a jitted step
  assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), host["tokens"])
  with pytest.raises(ValueError, match="not a multiple of the 4 batch shards"):
    sharding.shard_batch({"tokens": np.zeros((6, 5), np.int32)}, mesh)


def test_rules_from_config_rejects_unknown_mesh_axes():
  config = ml_collections.ConfigDict({"sharding_rules": (("embed", "model"),)})
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.rules_from_config(config)
  config = ml_collections.ConfigDict({"sharding_rules": (("act_batch", ["data", "fsdp"]),)})
  assert sharding.rules_from_config(config) == (("act_batch", ("data", "fsdp")),)
