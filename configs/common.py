"""What the experiment files share: the `arg` parser and a loader by name or path."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_arg(arg: str | None, *, config_name: str, **spec: Any) -> ml_collections.ConfigDict:
  """`arg` ("a=1,b,c=x") -> ConfigDict of `spec`'s keys, each value of its default's type.

  A bare key sets a bool to True. An unknown key, or a value that does not parse as its
  default's type, raises a one-line ValueError naming the config file and the known keys.
  """
  values = dict(spec)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key not in spec:
      raise ValueError(f"configs/{config_name}.py: unknown arg {key!r}; known: "
                       f"{', '.join(sorted(spec))}")
    default = spec[key]
    if isinstance(default, bool):
      text = text.strip().lower() if has_value else "true"
      if text not in _TRUE + _FALSE:
        raise ValueError(f"configs/{config_name}.py: arg {key}={text!r} is not a bool")
      values[key] = text in _TRUE
    elif not has_value:
      raise ValueError(f"configs/{config_name}.py: arg {key!r} needs a value ({key}=...)")
    elif isinstance(default, int):
      try:
        values[key] = int(text)
      except ValueError:
        raise ValueError(f"configs/{config_name}.py: arg {key}={text!r} is not an int") from None
    else:
      values[key] = text.strip()
  return ml_collections.ConfigDict(values)


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of `spec`: "NAME[:arg]" (a module of this package) or "path/NAME.py[:arg]"."""
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  here = os.path.dirname(os.path.abspath(__file__))
  if path.endswith(".py") and os.path.dirname(os.path.abspath(path)) != here:
    if not os.path.isfile(path):
      raise ValueError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  elif os.path.isfile(os.path.join(here, f"{name}.py")):
    module = importlib.import_module(f"configs.{name}")
  else:
    raise ValueError(f"no experiment config named {name!r} in configs/")
  return module.get_config(arg or None)
