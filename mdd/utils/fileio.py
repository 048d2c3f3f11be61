"""Small file helpers shared across mdd: atomic writes, so a kill never leaves half a file."""

import json
import os


def write_json_atomic(path: str, payload: dict):
  """Writes JSON via a temporary file and a rename, so readers never see half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
