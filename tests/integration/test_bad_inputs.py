"""Bad inputs through `python -m mdd.main`, one subprocess each: every one exits 2 with a single
line naming the problem, prints no traceback, and changes nothing in the workdir."""

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "--config=configs/shapes_tiny.py"
TOY = [
    "--config.data.train_size=128", "--config.data.validation_size=64",
    "--config.data.heldout_size=64", "--config.tokenizer.num_steps=4",
    "--config.tokenizer.batch_size=16", "--config.tokenizer.eval.num_examples=16",
    "--config.tokenizer.model.variant=micro", "--config.tokenizer.pretokenize.shard_size=32",
    "--config.denoiser_train.num_steps=4", "--config.denoiser_train.batch_size=16",
    "--config.denoiser_train.log_every=2", "--config.denoiser_train.ckpt_every=2",
    "--config.denoiser_train.eval_batches=1", "--config.denoiser_train.tensorboard=False",
    "--config.tokenizer.loop.tensorboard=False", "--config.sampler.num_steps=2",
]


def _run(workdir, *args, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("MDD_TRACEBACK", None)
  return subprocess.run([sys.executable, "-m", "mdd.main", f"--workdir={workdir}", *args],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _snapshot(root):
  """{relative path: sha1} of every file under `root` (a missing root is empty)."""
  out = {}
  for directory, _, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with a trained tokenizer, token shards and a denoiser at step 4 (toy sizes)."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  result = _run(workdir, TINY, *TOY, "--config.pipeline_stages=train_tokenizer,pretokenize,train")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _truncate(path, keep=0.3):
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * keep))


def _truncate_checkpoints(workdir, stage):
  for root, _, names in os.walk(os.path.join(workdir, stage, "checkpoints")):
    for name in names:
      if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep or root.endswith(os.sep + "d"):
        _truncate(os.path.join(root, name))


def _lock_held_by_a_live_process(workdir):
  import json  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  _write(os.path.join(workdir, ".lock"),
         json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": 0}))


# (name, args, expected text in the one line, prepare(workdir, tmp) -> None or another workdir,
# needs a trained workdir). Args may use {tmp} (a scratch folder outside the workdir).
CASES = [
    ("unknown field", [TINY, "--config.foo=1"], "no field 'foo'", None, False),
    ("unknown nested field", [TINY, "--config.data.fooo=1"], "no field 'fooo'", None, False),
    ("missing config file", ["--config=configs/nope.py"], "could not be loaded", None, False),
    ("config syntax error", ["--config={tmp}/broken.py"], "could not be loaded",
     lambda w, t: _write(f"{t}/broken.py", "def get_config(:\n"), False),
    ("get_config raises", ["--config={tmp}/raises.py"], "no such dataset here",
     lambda w, t: _write(f"{t}/raises.py",
                         "def get_config(arg=None):\n  raise ValueError('no such dataset here')\n"),
     False),
    ("unknown config arg", [TINY + ":lonng"], "unknown arg 'lonng'", None, False),
    ("bad field type", [TINY, "--config.seed=abc"], "abc", None, False),
    ("unknown mode", [TINY, "--config.mode=bogus"], "mode='bogus'", None, False),
    ("zero mesh axis", [TINY, "--config.mesh.tensor=0"], "mesh.tensor=0", None, False),
    ("mesh larger than the devices", [TINY, "--config.mesh.data=3"], "needs 3 devices", None,
     False),
    ("nan learning rate", [TINY, "--config.tokenizer.optimizer.lr=nan"],
     "tokenizer.optimizer.lr=nan", None, False),
    ("zero checkpoint period", [TINY, "--config.denoiser_train.ckpt_every=0"],
     "denoiser_train.ckpt_every=0", None, False),
    ("zero sample batch", [TINY, "--config.sample.batch_size=0"], "sample.batch_size=0", None,
     False),
    ("zero samples per prompt", [TINY, "--config.sample.num_per_prompt=0"],
     "sample.num_per_prompt=0", None, False),
    ("unknown unmask policy", [TINY, "--config.sampler.unmask_policy=bogus"],
     "unmask_policy 'bogus'", None, False),
    ("negative temperature", [TINY, "--config.sampler.temperature=-1"], "temperatures", None,
     False),
    ("bad downsample factor", [TINY, "--config.tokenizer.model.downsample_factor=3"],
     "downsample_factor=3", None, False),
    ("empty codebook", [TINY, "--config.tokenizer.model.vocab_size=0"], "vocab_size=0", None,
     False),
    ("folder source without a folder", [TINY, "--config.data.source=folder",
                                        "--config.data.validation_fraction=0.1"],
     "data.folder: required", None, False),
    ("resolution out of range", [TINY, "--config.data.resolution=20"], "data.resolution=20",
     None, False),
    ("unknown loss", [TINY, "--config.loss.type=bogus"], "loss.type='bogus'", None, False),
    ("unknown text encoder", [TINY, "--config.text.kind=bogus"], "text.kind='bogus'", None,
     False),
    ("fid without weights", [TINY, "--config.eval.evals=('fid',)",
                             "--config.eval.fid.ref_stats={tmp}/ref.npz"],
     "eval.fid.weights: required",
     None, False),
    ("unknown pipeline stage", [TINY, "--config.pipeline_stages=train,bogus"],
     "unknown stages ['bogus']", None, False),
    ("patch size not dividing the grid", [TINY, "--config.denoiser.patch_size=3"],
     "denoiser.patch_size=3", None, False),
    ("workdir is a file", [TINY], "is a file", lambda w, t: _write(w, "not a folder"), False),
    ("workdir cannot be created", [TINY], "cannot be created",
     lambda w, t: "/proc/mdd-cannot-create/run", False),
    ("truncated token shard", [TINY, *TOY, "--config.mode=train",
                               "--config.denoiser_train.num_steps=6"], "is corrupt",
     lambda w, t: _truncate(os.path.join(w, "tokens", "train", "shard-00000.npz")), True),
    ("truncated neighbour table", [TINY, *TOY, "--config.mode=train",
                                   "--config.denoiser_train.num_steps=6"], "neighbours.npz",
     lambda w, t: _truncate(os.path.join(w, "tokenizer", "neighbours.npz")), True),
    ("corrupt tokenizer config", [TINY, *TOY, "--config.mode=pretokenize"], "not valid JSON",
     lambda w, t: _write(os.path.join(w, "tokenizer", "tokenizer_config.json"), "{"), True),
    ("every denoiser checkpoint truncated", [TINY, *TOY, "--config.mode=sample"],
     "no readable checkpoint", lambda w, t: _truncate_checkpoints(w, "denoiser"), True),
    ("sampling a workdir with no denoiser", [TINY, *TOY, "--config.mode=sample"],
     "no denoiser checkpoint",
     lambda w, t: shutil.rmtree(os.path.join(w, "denoiser", "checkpoints")), True),
    ("sample folder cannot be written", [TINY, *TOY, "--config.mode=sample",
                                         "--config.sample.outdir=/proc/mdd-samples"],
     "/proc/mdd-samples", None, True),
    ("checkpoint of another config", [TINY, *TOY, "--config.mode=train",
                                      "--config.denoiser.width=64",
                                      "--config.denoiser_train.num_steps=6"],
     "cannot be restored for this config", None, True),
    ("workdir locked by a live run", [TINY, *TOY, "--config.mode=train",
                                      "--config.denoiser_train.num_steps=6"], "is in use by pid",
     lambda w, t: _lock_held_by_a_live_process(w), True),
    ("non-finite training", [TINY, *TOY, "--config.mode=train",
                             "--config.denoiser_train.num_steps=8",
                             "--config.denoiser_train.optim.lr=1e30"],
     "non-finite loss, gradients or weights", None, True),
]


@pytest.mark.parametrize("name,args,expected,prepare,needs_trained", CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(request, tmp_path, name, args, expected,
                                                    prepare, needs_trained):
  del name
  scratch = str(tmp_path / "scratch")
  os.makedirs(scratch)
  workdir = str(tmp_path / "run")
  if needs_trained:
    shutil.copytree(request.getfixturevalue("trained"), workdir)
  if prepare is not None:
    workdir = prepare(workdir, scratch) or workdir  # a case may name another workdir
  before = _snapshot(workdir) if os.path.isdir(workdir) else None
  result = _run(workdir, *[a.format(tmp=scratch) for a in args])
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith(("mdd: error:", "config error:"))]
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert len(errors) == 1, lines[-10:]
  assert expected in errors[0], errors[0]
  if before is not None:
    after = _snapshot(workdir)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_the_table_covers_thirty_bad_inputs():
  assert len(CASES) >= 30
  assert np.unique([c[0] for c in CASES]).size == len(CASES)
