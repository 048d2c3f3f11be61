"""mdd's experiment configs: one file per experiment family, each with `get_config(arg)`.

Run one with `python -m mdd.main --config=configs/NAME.py[:arg] --workdir=DIR`; import one
with `configs.load("NAME[:arg]")` (or `configs.load("configs/NAME.py:arg")`).
"""

from configs.common import load, parse_arg  # noqa: F401
