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


def test_two_processes_share_one_mesh_and_batch(tmp_path):
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MDD_CPU_COLLECTIVES="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), MDD_WORKER_RESULT=str(tmp_path / f"{pid}.json"))
    procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "integration",
                                                                 "multiprocess_worker.py")],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  for p in procs:
    _, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-2000:]
  results = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]
  rows = np.arange(8, dtype=np.float32)
  expected_total = float(np.sum(rows) + np.sum(10 * rows))
  for r in results:
    assert r["processes"] == 2 and r["devices"] == 8
    assert r["global_shape"] == [8, 2]  # 4 rows from each process
    assert r["total"] == expected_total
    assert r["w_spec"] == "P('fsdp', 'tensor')"
  assert results[0]["w_sum"] == results[1]["w_sum"]
