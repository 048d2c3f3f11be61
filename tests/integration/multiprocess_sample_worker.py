"""Worker for test_multiprocess_sampling.py: `python -m mdd.main` (the launcher itself, argv from
MDD_WORKER_ARGV) in one process of a job, or alone, with every file write logged.

Every file of a workdir is written through `mdd.utils.fileio.write_bytes_atomic` (the text,
JSON and npz writers call it); each call appends its path to the JSON list at MDD_WRITE_LOG, so
the test can tell which process wrote what and how often.
"""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
# The launcher loads `configs/` from the repository root, as `python -m mdd.main` does from there.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _log_writes(log_path: str):
  from mdd.utils import fileio  # pylint: disable=import-outside-toplevel
  writes = []

  def logged(name):
    original = getattr(fileio, name)

    def write(path, *args, **kwargs):
      writes.append(str(path))
      with open(log_path, "w", encoding="utf-8") as f:
        json.dump(writes, f)
      return original(path, *args, **kwargs)

    setattr(fileio, name, write)

  logged("write_bytes_atomic")
  with open(log_path, "w", encoding="utf-8") as f:
    json.dump(writes, f)


def main():
  _log_writes(os.environ["MDD_WRITE_LOG"])
  from mdd import main as main_lib  # pylint: disable=import-outside-toplevel
  sys.argv = ["mdd.main", *json.loads(os.environ["MDD_WORKER_ARGV"])]
  main_lib.run()


if __name__ == "__main__":
  main()
