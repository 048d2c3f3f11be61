"""Reading a pretrained Hugging Face model folder: its `config.json` and `*.safetensors` weights.

Shared by the BERT (`minilm`) and T5 loaders, which turn the torch-named arrays into Flax params.
"""

from __future__ import annotations

import json
import os

import numpy as np


def load_safetensors(folder: str) -> dict[str, np.ndarray]:
  """Every array of the folder's `*.safetensors` files (sharded checkpoints merged)."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {folder}")
  weights = {}
  for f in files:
    weights.update(load_file(os.path.join(folder, f)))
  return weights


def read_config(folder: str) -> dict:
  """The folder's `config.json` as a dict."""
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {folder}")
  with open(path, encoding="utf-8") as f:
    return json.load(f)
