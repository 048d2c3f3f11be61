"""Two CPU processes form one jax.distributed job (gloo collectives) over localhost."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(worker: str, tmp_path, devices: int, **env_extra) -> list[dict]:
  """Runs tests/integration/`worker` as 2 processes of one gloo job; their result files."""
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MDD_CPU_COLLECTIVES="gloo",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), MDD_WORKER_RESULT=str(tmp_path / f"{pid}.json"),
               **env_extra)
    procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "integration",
                                                                 worker)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
  return [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]


def test_two_processes_share_one_mesh_and_batch(tmp_path):
  results = _run_two_processes("multiprocess_worker.py", tmp_path, devices=4)
  rows = np.arange(8, dtype=np.float32)
  expected_total = float(np.sum(rows) + np.sum(10 * rows))
  for r in results:
    assert r["processes"] == 2 and r["devices"] == 8
    assert r["global_shape"] == [8, 2]  # 4 rows from each process
    assert r["total"] == expected_total
    assert r["w_spec"] == "P('fsdp', 'tensor')"
  assert results[0]["w_sum"] == results[1]["w_sum"]


def test_two_processes_read_disjoint_halves_of_the_global_batch_across_a_resume(tmp_path):
  """Each process's batches are disjoint and together equal the 1-process global batch, before
  and after a resume that restores the input position from the checkpoint."""
  results = _run_two_processes("multiprocess_data_worker.py", tmp_path, devices=2,
                               MDD_WORKDIR=str(tmp_path / "run"))
  sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
  from multiprocess_data_worker import IndexSource  # pylint: disable=import-outside-toplevel
  from mdd.data import loader  # pylint: disable=import-outside-toplevel
  single = loader.batch_iterator(IndexSource(), batch_size=8, seed=11)
  expected = [sorted(next(single)["index"].tolist()) for _ in range(10)]
  for r in results:  # The second run restored the state saved at step 6 into its stream.
    assert r["restored_states"] == [{"next_index": 6}]
  for step in range(10):
    run, k = ("first", step) if step < 6 else ("resumed", step - 6)
    parts = [results[p][run][k] for p in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4
    assert sorted(parts[0] + parts[1]) == expected[step], step
    if len(set(expected[step])) == 8:  # Within one epoch the halves share nothing.
      assert not set(parts[0]) & set(parts[1])
