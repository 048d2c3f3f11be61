"""A workdir on `gs://`: checkpoints, JSON and npz files, metrics, token shards and eval layouts
written and read through `mdd.utils.fileio` / orbax against a local GCS emulator
(tests/gcs_emulator.py), and the same helpers on local paths."""

import json
import os
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import
from mdd import main as main_lib
from mdd import workdir as workdir_lib
from mdd.data import token_shards
from mdd.eval import dpg_layout
from mdd.eval import fid
from mdd.eval import geneval_layout
from mdd.objectives import neighbours as neighbours_lib
from mdd.sampling import visualize
from mdd.train import metrics
from mdd.train import pretokenize
from mdd.utils import checkpoints
from mdd.utils import fileio


@pytest.fixture
def run_url(gcs_bucket):  # pylint: disable=redefined-outer-name
  """A fresh `gs://test-bucket/<unique>` folder per test."""
  return f"{gcs_bucket}/{uuid.uuid4().hex[:12]}"


def _sharded_tree():
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model"))
  tree = {"params": {"w": jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(8, 8) / 7,
                                         spec),
                     "b": jnp.arange(3, dtype=jnp.int32)},
          "opt": {"mu": jnp.full((4,), 0.5, jnp.bfloat16)}}
  return tree, spec


def test_orbax_checkpoints_round_trip_on_gcs(run_url):
  directory = f"{run_url}/denoiser/checkpoints"
  assert checkpoints.all_steps(directory) == []
  tree, spec = _sharded_tree()
  with checkpoints.manager(directory, keep=2, async_save=True) as manager:
    assert str(manager.directory) == directory  # A URL is not made a local path.
    for step in (1, 2, 3):
      step_tree = jax.tree.map(lambda x, s=step: x * s, tree)
      manager.save(step, args=ocp.args.StandardSave(step_tree))
    manager.wait_until_finished()
  assert not os.path.exists("gs:")  # Nothing went to a local folder named after the URL.
  assert checkpoints.all_steps(directory) == [3, 2]  # keep=2 deleted step 1.

  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  with checkpoints.manager(directory) as manager:
    restored = manager.restore(3, args=ocp.args.StandardRestore(abstract))
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(tree)):
    assert got.dtype == want.dtype and got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want * 3))

  # Only the parameters, into the given sharding.
  target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec)
                                   if x.ndim == 2 else x, checkpoints.on_device(abstract["params"]))}
  subtrees, step = checkpoints.restore_subtrees(directory, target, name="denoiser")
  assert step == 3
  assert subtrees["params"]["w"].sharding == spec
  np.testing.assert_array_equal(np.asarray(subtrees["params"]["w"]),
                                np.asarray(tree["params"]["w"] * 3))

  # An unreadable step is set aside (copied and deleted on the object store), then skipped.
  moved = checkpoints.set_aside(directory, 3)
  assert moved == f"{directory}/corrupt-3" and fileio.isdir(moved)
  assert not fileio.exists(f"{directory}/3")
  assert checkpoints.all_steps(directory) == [2]
  assert checkpoints.restore_subtrees(directory, target)[1] == 2


def test_listings_see_other_writers(run_url):
  """gcsfs' listing cache is off: an object another client writes shows up at once."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  fileio.write_text_atomic(f"{run_url}/a.json", "{}")
  assert fileio.listdir(run_url) == ["a.json"]
  other = gcsfs.GCSFileSystem(skip_instance_cache=True)
  other.pipe(f"{run_url}/b.json", b"{}")
  assert fileio.listdir(run_url) == ["a.json", "b.json"]
  assert fileio.exists(f"{run_url}/b.json")


def test_workdir_files_on_gcs(run_url, tmp_path):
  run = workdir_lib.Workdir(run_url + "/")
  assert run.root == run_url and run.tokenizer_dir == f"{run_url}/tokenizer"
  assert fileio.read_json_record(run.plan_file) is None
  fileio.write_json_atomic(run.plan_file, {"fits": True})
  assert fileio.read_json(run.plan_file, fix="x") == {"fits": True}
  fileio.write_text_atomic(run.run_config_file, '{"mode": ')
  with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
    run.load_run_config()
  fileio.write_json_atomic(run.run_config_file, {"mode": "train", "seed": 3})
  assert run.load_run_config().seed == 3

  table = neighbours_lib.NeighbourTable(np.arange(8, dtype=np.int32).reshape(4, 2),
                                        np.full((4, 2), 0.5, np.float32))
  neighbours_lib.save_table(run.neighbours_file, table)
  np.testing.assert_array_equal(run.load_neighbours().neighbours, table.neighbours)
  fileio.write_bytes_atomic(run.neighbours_file, fileio.read_bytes(run.neighbours_file)[:40])
  with pytest.raises(ValueError, match="neighbours.npz is corrupt"):
    run.load_neighbours()

  with run.lock():
    assert fileio.read_json(run.lock_file, fix="")["pid"] == os.getpid()
    with pytest.raises(ValueError, match=f"in use by pid {os.getpid()}"):
      with run.lock():
        pass
  assert not fileio.exists(run.lock_file)
  assert "no denoiser checkpoint" in run.source_problem()
  assert main_lib._usable_workdir(run_url + "/") == run_url  # pylint: disable=protected-access


def test_tokenizer_copied_from_a_local_run_to_gcs(run_url, tmp_path):
  source = workdir_lib.Workdir(str(tmp_path / "source"))
  tree, _ = _sharded_tree()
  with checkpoints.manager(source.checkpoints_dir("tokenizer"), async_save=False) as manager:
    manager.save(5, args=ocp.args.StandardSave({"generator": tree}))
  fileio.write_json_atomic(source.tokenizer_config_file, {"tokenizer": {}})
  neighbours_lib.save_table(source.neighbours_file, neighbours_lib.NeighbourTable(
      np.zeros((2, 1), np.int32), np.ones((2, 1), np.float32)))
  target = workdir_lib.Workdir(run_url)
  record = target.copy_tokenizer_from(source)
  assert record == {"source": source.root, "step": 5}
  assert target.checkpoint_steps("tokenizer") == [5]
  assert fileio.listdir(target.tokenizer_dir) == ["checkpoints", "copied_from.json",
                                                  "neighbours.npz", "tokenizer_config.json"]
  abstract = checkpoints.on_device(jax.tree.map(ocp.utils.to_shape_dtype_struct, tree["params"]))
  restored, step = checkpoints.restore_subtrees(target.checkpoints_dir("tokenizer"),
                                                {"params": abstract}, path=("generator",))
  assert step == 5
  np.testing.assert_array_equal(np.asarray(restored["params"]["w"]),
                                np.asarray(tree["params"]["w"]))


def test_metrics_on_gcs(run_url, monkeypatch):
  logdir = f"{run_url}/denoiser"
  writer = metrics.JsonlWriter(logdir, upload_every_s=0)  # Every row uploaded at once.
  writer.write_scalars(1, {"loss": 2.0})
  assert [r["loss"] for r in metrics.read_jsonl(writer.path)] == [2.0]
  writer.close()
  # A resumed run keeps the earlier rows (an object store cannot append); rows wait for the
  # upload interval or flush/close.
  writer = metrics.JsonlWriter(logdir, upload_every_s=3600)
  writer.write_scalars(2, {"loss": 1.0})
  assert [r["step"] for r in metrics.read_jsonl(writer.path)] == [1]
  writer.flush()
  assert [r["step"] for r in metrics.read_jsonl(writer.path)] == [1, 2]
  writer.close()
  # The train loop's writer: TensorFlow cannot reach the store epath uses (gcsfs), so no
  # TensorBoard writer is made; the JSON rows still land.
  monkeypatch.setattr(metrics, "tensorflow_available", lambda: True)
  assert not metrics.tensorboard_reaches(logdir) and metrics.tensorboard_reaches("/tmp/x")
  writer = metrics.Writer(logdir, tensorboard=True)
  writer.write_scalars(3, {"loss": 0.5})
  writer.close()
  assert [r["step"] for r in metrics.read_jsonl(f"{logdir}/metrics.jsonl")] == [1, 2, 3]
  assert fileio.listdir(logdir) == ["metrics.jsonl"]


class _FakeTokenizer:
  downsample_factor, num_codes = 4, 64

  def encode(self, images):
    return (images[:, ::4, ::4, 0].astype(np.int32) % 64)


def _source(count):
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "caption": f"c{i}",
           "text_ids": np.full((3,), i, np.int32)} for i in range(count)]


def test_token_shards_on_gcs(run_url):
  source, tokenizer = _source(7), _FakeTokenizer()
  out = f"{run_url}/tokens/train"
  assert pretokenize.pretokenize_split(tokenizer, source, out, shard_size=3, batch_size=2,
                                       max_shards=2) == [0, 1]
  with pytest.raises(ValueError, match="1 of 3 shards missing"):
    token_shards.TokenShardSource(out)
  fileio.write_bytes_atomic(token_shards.shard_path(out, 2) + ".tmp-999", b"half")
  assert pretokenize.pretokenize_split(tokenizer, source, out, shard_size=3, batch_size=2) == [2]
  assert fileio.listdir(out) == ["manifest.json", "shard-00000.npz", "shard-00001.npz",
                                 "shard-00002.npz"]  # The stale temporary file is gone.
  reader = token_shards.TokenShardSource(f"{run_url}/tokens", split="train")
  assert len(reader) == 7 and reader.token_shape == (2, 2)
  want = tokenizer.encode(np.stack([e["image"] for e in source]))
  batch = reader.get_batch(np.array([6, 0, 4]))
  np.testing.assert_array_equal(batch["tokens"], want[[6, 0, 4]])
  assert list(batch["caption"]) == ["c6", "c0", "c4"]
  np.testing.assert_array_equal(reader[5]["text_ids"], [5, 5, 5])


def test_eval_layouts_and_statistics_on_gcs(run_url):
  def generate(prompts, seeds):
    return np.stack([np.full((4, 4, 3), s, np.uint8) for s in seeds])

  metadata = [{"prompt": f"p{i}", "tag": "colors"} for i in range(3)]
  out = f"{run_url}/eval/geneval"
  geneval_layout.generate_layout(generate, metadata, out, images_per_prompt=2, seed=10)
  entries = geneval_layout.read_layout(out)
  assert [e["metadata"] for e in entries] == metadata
  assert entries[2]["images"] == [f"{out}/00002/samples/0000.png",
                                  f"{out}/00002/samples/0001.png"]
  assert geneval_layout.read_image(entries[2]["images"][1])[0, 0, 0] == 10 + 2 * 2 + 1
  fileio.remove(entries[1]["images"][0])
  calls = []
  geneval_layout.generate_layout(lambda p, s: calls.append(list(s)) or generate(p, s),
                                 metadata, out, images_per_prompt=2, seed=10)
  assert calls == [[12, 13]]  # Only the incomplete prompt again.

  prompts = f"{run_url}/dpg_prompts"
  for name in ("b", "a"):
    fileio.write_text_atomic(f"{prompts}/{name}.txt", f"prompt {name}\n")
  paths = dpg_layout.generate_grids(generate, prompts, f"{run_url}/eval/dpg", seed=0)
  assert paths == [f"{run_url}/eval/dpg/a.png", f"{run_url}/eval/dpg/b.png"]
  grid = geneval_layout.read_image(paths[1])
  assert [tile[0, 0, 0] for tile in dpg_layout.split_grid(grid)] == [4, 5, 6, 7]
  assert fid.list_image_files(f"{run_url}/eval/dpg") == paths

  stats = f"{run_url}/eval/stats.npz"
  fid.save_statistics(stats, np.ones(3), np.eye(3))
  mu, sigma = fid.load_statistics(stats)
  np.testing.assert_array_equal(sigma, np.eye(3))
  visualize.save_png(f"{run_url}/samples/one.png", np.full((4, 5, 3), 7, np.uint8))
  assert geneval_layout.read_image(f"{run_url}/samples/one.png")[3, 4, 2] == 7


def test_local_paths_behave_as_before(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert fileio.absolute("run") == str(tmp_path / "run")
  assert fileio.absolute("~/run") == os.path.expanduser("~/run")
  assert fileio.absolute("gs://b/run/") == "gs://b/run" and fileio.is_remote("gs://b/run")
  target = tmp_path / "a" / "b.json"
  fileio.write_json_atomic(str(target), {"z": 1, "a": [1]})
  assert json.loads(target.read_text()) == {"a": [1], "z": 1}
  assert os.listdir(target.parent) == ["b.json"]  # No temporary file left.
  assert sorted(os.listdir(tmp_path)) == ["a"]
  assert fileio.create_exclusive(str(tmp_path / "lock"), "mine")
  assert not fileio.create_exclusive(str(tmp_path / "lock"), "theirs")
  assert (tmp_path / "lock").read_text() == "mine"
  # A relative data cache lives in a local workdir, and beside (never in) a remote one.
  assert main_lib.data_cache_dir(str(tmp_path), "cache") == str(tmp_path / "cache")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert main_lib.data_cache_dir("gs://b/run", "cache") == str(tmp_path / "xdg/mdd/gs/b/run/cache")
  assert main_lib.data_cache_dir("gs://b/run", "/abs/cache") == "/abs/cache"
