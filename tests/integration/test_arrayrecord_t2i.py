"""A user's own image-text pairs, end to end on remote storage: a folder of odd images (some
corrupt) converted to ArrayRecord shards on gs://, then the t2i config's `runlocal` arg through
every stage from a gs:// workdir (tokenizer, pretokenize, train, sample, FID eval against the
same held-out images), then a training run killed mid-way resumes to the bit-exact parameters of
an uninterrupted one. All against the local GCS emulator (tests/gcs_emulator.py)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
import data_fixtures  # noqa: E402
from gcs_emulator import gcs_bucket  # noqa: E402,F401  pylint: disable=unused-import
from test_fid import _random_state_dict  # noqa: E402  (random FID Inception weights)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_EXTRA = 40  # Photos added to the fixture folder's 11 good ones: enough for two splits.


def _env():
  # The emulator's variables (STORAGE_EMULATOR_HOST, ...) are in os.environ while it runs.
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=REPO)


def _run(args, cwd, timeout=900):
  result = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _photo_folder(root) -> data_fixtures.Fixture:
  """The fixture folder (odd sizes, grey, RGBA, palette, EXIF-rotated, 3 corrupt files, a missing
  one, a bad manifest line) plus `NUM_EXTRA` smooth photos of random sizes and aspects."""
  fixture = data_fixtures.write_image_folder(root)
  rng = np.random.default_rng(1)
  lines = []
  for i in range(NUM_EXTRA):
    height, width = (int(v) for v in rng.integers(24, 120, 2))
    name = f"images/extra_{i:02d}.{'png' if i % 4 == 0 else 'jpg'}"
    image = data_fixtures.smooth_image(rng, height, width)
    kind = "PNG" if name.endswith("png") else "JPEG"
    with open(os.path.join(root, name), "wb") as f:
      f.write(data_fixtures.encode(Image.fromarray(image), kind))
    fixture.good[name] = f"a smooth picture number {i} of size {height}x{width}"
    lines.append(json.dumps({"image": name, "caption": fixture.good[name]}))
  with open(os.path.join(root, "manifest.jsonl"), "a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return fixture


def _params_at(checkpoints_dir: str, step: int) -> list[np.ndarray]:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(f"{checkpoints_dir}/{step}/default")
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state["params"])]


def test_own_pairs_to_arrayrecord_through_every_stage_on_gcs(gcs_bucket, tmp_path):  # pylint: disable=redefined-outer-name
  from mdd.train import metrics  # pylint: disable=import-outside-toplevel
  from mdd.utils import fileio  # pylint: disable=import-outside-toplevel
  fixture = _photo_folder(str(tmp_path / "photos"))
  records = f"{gcs_bucket}/pairs"
  _run(["-m", "mdd.data.convert", f"--input={tmp_path / 'photos'}", f"--output={records}",
        "--shard_size=16", "--num_workers=2", "--validation_fraction=0.25", "--max_side=96"],
       cwd=str(tmp_path))
  stats = fileio.read_json(f"{records}/stats.json", fix="")
  assert sum(stats["num_examples"].values()) == len(fixture.good)
  assert stats["num_examples"]["validation"] >= 4
  assert sum(stats["skipped"].values()) == len(fixture.corrupt) + len(fixture.missing) + 1

  weights = str(tmp_path / "fid_inception_random.npz")
  np.savez(weights, **_random_state_dict(3))
  workdir = f"{gcs_bucket}/t2i"
  # One compilation cache (local, outside the bucket) for the five runs: the training runs
  # after the pipeline load its programs instead of compiling them again.
  config = ["-m", "mdd.main", f"--config={REPO}/configs/t2i.py:runlocal,source=arrayrecord",
            f"--workdir={workdir}", f"--config.data.records={records}",
            f"--config.eval.fid.weights={weights}",
            f"--config.compilation_cache_dir={tmp_path / 'jax_cache'}"]
  result = _run(config, cwd=str(tmp_path), timeout=1200)
  for stage in ("train_tokenizer", "pretokenize", "train", "sample", "eval"):
    assert f"=== pipeline: {stage} ===" in result.stdout
  for name in ("config.json", "tokenizer/eval.json", "tokenizer/neighbours.npz",
               "tokens/train/manifest.json", "denoiser/eval.json", "denoiser/checkpoints/5",
               "samples/grid.png", "eval/fid.json"):
    assert fileio.exists(f"{workdir}/{name}"), name
  assert not os.path.exists(os.path.join(str(tmp_path), "gs:"))  # Nothing landed locally.
  fid = fileio.read_json(f"{workdir}/eval/fid.json", fix="")
  assert fid["num_images"] == 16 and np.isfinite(fid["fid"])
  prompts = fileio.read_text(f"{workdir}/samples/prompts.txt")
  assert "picture" in prompts  # Held-out captions of the pairs, not ShapeGen's prompts.

  # The reference: train on from step 5 to 13 uninterrupted (checkpoints at 8, 12 and 13).
  ckpts = f"{workdir}/denoiser/checkpoints"
  # Synchronous saves: once step 10 is logged, the step-8 checkpoint is complete.
  more = ["--config.mode=train", "--config.denoiser_train.num_steps=13",
          "--config.denoiser_train.ckpt_every=4", "--config.denoiser_train.keep_checkpoints=5",
          "--config.denoiser_train.async_checkpoints=false"]
  _run(config + more, cwd=str(tmp_path))
  reference = _params_at(ckpts, 13)
  for step in ("8", "12", "13"):  # Back to the state after the pipeline.
    fileio.rmtree(f"{ckpts}/{step}")
  fileio.remove(f"{workdir}/denoiser/eval.json")
  assert fileio.listdir(ckpts) == ["5"]

  # Killed (SIGKILL: no chance to save) once step 10 is done, after the step-8 checkpoint.
  proc = subprocess.Popen([sys.executable, *config, *more], cwd=str(tmp_path), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if line.startswith("[denoiser] step 10/13"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.communicate(timeout=120)
  assert proc.returncode == -signal.SIGKILL
  assert "13" not in fileio.listdir(ckpts)
  result = _run(config + more, cwd=str(tmp_path))
  # From the step-8 checkpoint, with the input pipeline's position saved in it.
  assert "resuming from checkpoint step 8" in result.stdout + result.stderr
  for got, want in zip(_params_at(ckpts, 13), reference, strict=True):
    np.testing.assert_array_equal(got, want)
  # metrics.jsonl on the bucket is rewritten, not appended: every run's rows are still there.
  rows = metrics.read_jsonl(f"{workdir}/denoiser/metrics.jsonl")
  logged = [r["step"] for r in rows if "loss" in r]
  assert logged[:5] == [1, 2, 3, 4, 5] and logged[-1] == 13
