"""Sampling and evaluation on the mesh across processes: `python -m mdd.main` with the stages
sample and eval as 2 CPU processes x 4 devices (one gloo job) and as 1 process x 8 devices, both
on the mesh data=2, fsdp=2, tensor=2, give byte-identical files (PNGs, GIF, layouts, scores),
and only process 0 writes, each file once. Both start from a stale ShapeGenEval layout (another
generator's fingerprint, some complete prompt folders), which process 0 alone clears: had the
other process counted those folders as done, the two would run different batches."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests"))

# pylint: disable=wrong-import-position
import sampling_fixtures  # noqa: E402
from test_multiprocess import _free_port  # noqa: E402

MESH = dict(data=2, fsdp=2, tensor=2)
# What differs from shapes_tiny:runlocal, for the fixture's config and the launcher alike: one
# batch size (one compiled sampler for both stages) and the 120 held-out prompts, one image each.
OVERRIDES = {**{f"mesh.{k}": v for k, v in MESH.items()}, "denoiser.depth": 2,
             "sampler.num_steps": 4, "sample.batch_size": 60, "sample.num_per_prompt": 1,
             "eval.shapes_geneval.batch_size": 60, "eval.shapes_geneval.which": "heldout",
             "eval.shapes_geneval.images_per_prompt": 1}
ARGV = ["--config=configs/shapes_tiny.py:runlocal", "--config.mode=pipeline",
        "--config.pipeline_stages=sample,eval",
        *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]


def _start(workdir, tmp_path, processes: int):
  """Starts the worker as `processes` processes of one job (8 devices in all)."""
  port = _free_port()
  procs = []
  for pid in range(processes):
    # XLA:CPU sizes its intra-op thread pool max(NPROC, devices) and its convolutions round
    # differently with 4 threads than with 8 (the tokenizer's decoder moves pixels by one level):
    # the same pool in every process, whatever its device count.
    env = dict(os.environ, JAX_PLATFORMS="cpu", NPROC="8",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
               MDD_WRITE_LOG=str(tmp_path / f"writes-{processes}-{pid}.json"),
               MDD_WORKER_ARGV=json.dumps([f"--workdir={workdir}", *ARGV]))
    env.pop("MDD_TRACEBACK", None)
    if processes > 1:
      env.update(MDD_DISTRIBUTED="1", MDD_CPU_COLLECTIVES="gloo",
                 JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "integration",
                                      "multiprocess_sample_worker.py")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, tmp_path):
  """Waits for a job's processes; (their write logs, their stdouts)."""
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return ([json.loads((tmp_path / f"writes-{len(procs)}-{pid}.json").read_text())
           for pid in range(len(procs))], [out for out, _ in outputs])


def _stale_layout(workdir):
  """A ShapeGenEval layout left by another generator: its fingerprint and 3 complete prompts."""
  from mdd.data import prompts as prompts_lib  # pylint: disable=import-outside-toplevel
  from mdd.eval import geneval_layout  # pylint: disable=import-outside-toplevel
  layout = os.path.join(workdir, "eval", "shapes_geneval", "heldout")
  metadata = prompts_lib.load_prompts("heldout")
  for i in range(3):
    geneval_layout.write_prompt(layout, i, metadata[i], [np.zeros((32, 32, 3), np.uint8)])
  with open(os.path.join(layout, geneval_layout.FINGERPRINT_FILE), "w", encoding="utf-8") as f:
    json.dump({"denoiser_step": -1}, f)


def _files(root):
  """{relative path: bytes} of every file under `root`."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
  config = sampling_fixtures.tiny_config()
  for key, value in OVERRIDES.items():
    *sections, field = key.split(".")
    section = config
    for name in sections:
      section = section[name]
    section[field] = value
  return config, sampling_fixtures.make_workdir(tmp_path_factory.mktemp("run"), config)


def test_two_processes_sample_and_evaluate_like_one_and_only_process_0_writes(untrained_run,
                                                                                tmp_path):
  _, source = untrained_run
  jobs = {}
  for processes in (2, 1):  # Both jobs at once: the 2-process one waits on its collectives.
    workdir = tmp_path / f"run-{processes}"
    subprocess.run(["cp", "-r", source, str(workdir)], check=True)
    _stale_layout(workdir)
    jobs[processes] = workdir, _start(workdir, tmp_path, processes)
  results = {}
  for processes, (workdir, procs) in jobs.items():
    logs, stdouts = _finish(procs, tmp_path)
    written = {folder: _files(workdir / folder) for folder in ("samples", "eval")}
    results[processes] = written
    # One writer: process 0 wrote every file of the stages, each once; the others nothing.
    assert all(not log for log in logs[1:]), logs[1][:5]
    paths = [os.path.relpath(p, workdir) for p in logs[0]]
    assert len(paths) == len(set(paths)), sorted(p for p in paths if paths.count(p) > 1)[:5]
    for folder, files in written.items():
      assert {os.path.join(folder, name) for name in files} <= set(paths), folder
    assert sum("ShapeGenEval overall=" in out for out in stdouts) == 1
  two, one = results[2], results[1]
  pngs = [name for name in one["samples"] if name[:4].isdigit()]
  assert len(pngs) == 16 and {"grid.png", "trajectory.gif", "prompts.txt",
                              "done.json"} <= set(one["samples"])
  layout = [name for name in one["eval"] if name.endswith(".png")]
  assert len(layout) == 120
  assert sorted(two["samples"]) == sorted(one["samples"])
  assert sorted(two["eval"]) == sorted(one["eval"])
  for folder in ("samples", "eval"):
    different = [name for name in one[folder] if two[folder][name] != one[folder][name]]
    assert not different, different[:5]
  stale = os.path.join("shapes_geneval", "heldout", "00000", "samples", "0000.png")
  assert np.asarray(Image.open(io.BytesIO(one["eval"][stale]))).any()  # regenerated, not black
  scores = json.loads(one["eval"]["shapes_geneval.json"])
  assert scores["num_images"] == 120 and scores["prompt_set"] == "heldout"
