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


def read_json(path: str, *, fix: str) -> dict:
  """The JSON in `path`; a file that is not JSON is a one-line ValueError naming it and `fix`."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}); {fix}") from None


def read_json_record(path: str):
  """A record file a stage compares against to skip work (e.g. samples/done.json): its JSON, or
  None when it is missing or unreadable (the work is then simply redone)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
