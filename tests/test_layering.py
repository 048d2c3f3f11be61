"""The architecture's layering rules, read from the source's imports (ast), not from a reviewer.

Layers, bottom to top (docs/architecture.md); a module may import its own layer and those below:

  utils      mdd.utils
  data       mdd.data
  models     mdd.models, mdd.objectives, pallas_kernels
  sampling   mdd.sampling, mdd.workdir
  runners    mdd.train, mdd.inference, mdd.eval
  top        mdd.stages, mdd.main, mdd.validate, mdd.defaults, mdd.plan, mdd.experiments,
             mdd.bench, configs

Also: nothing outside mdd.train (and the top layer) imports a trainer; pallas_kernels imports
nothing from mdd; no import cycle between modules (function-local imports included).
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mdd", "pallas_kernels", "configs")
LAYERS = [
    ("utils", ("mdd.utils",)),
    ("data", ("mdd.data",)),
    ("models", ("mdd.models", "mdd.objectives", "pallas_kernels")),
    ("sampling", ("mdd.sampling", "mdd.workdir")),
    ("runners", ("mdd.train", "mdd.inference", "mdd.eval")),
    ("top", ("mdd.stages", "mdd.main", "mdd.validate", "mdd.defaults", "mdd.plan",
             "mdd.experiments", "mdd.bench", "configs")),
]


def _modules(root: str) -> dict[str, str]:
  """module name -> file path, for every .py file of the packages under `root`."""
  out = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(root, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(directory, name)
          module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
          out[module.removesuffix(".__init__")] = path
  return out


def import_graph(root: str = REPO) -> dict[str, set[str]]:
  """module -> the project modules it imports (anywhere in the file)."""
  modules = _modules(root)
  graph = {}
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
    is_package = path.endswith("__init__.py")
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = module.split(".")[:len(module.split(".")) - node.level + (1 if is_package else 0)]
          base = ".".join(parts + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
      else:
        continue
      for target in targets:
        while target and target not in modules:
          target = target.rpartition(".")[0]
        if target and target != module:
          deps.add(target)
    graph[module] = deps
  return graph


def layer_of(module: str) -> int:
  for index, (_, prefixes) in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return index
  raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_has_a_layer():
  for module in import_graph():
    if module not in PACKAGES:
      layer_of(module)


def test_imports_point_down():
  graph = import_graph()
  upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
            for m, deps in graph.items() if m not in PACKAGES
            for d in deps if d not in PACKAGES and layer_of(d) > layer_of(m)]
  assert not upward, "\n".join(upward)


def test_only_the_top_layer_imports_trainers():
  graph = import_graph()
  bad = [f"{m} imports {d}" for m, deps in graph.items() for d in deps
         if d.startswith("mdd.train") and not m.startswith("mdd.train")
         and layer_of(m) < len(LAYERS) - 1]
  assert not bad, "\n".join(bad)


def test_kernels_import_nothing_from_mdd():
  graph = import_graph()
  bad = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith("pallas_kernels")
         for d in deps if not d.startswith("pallas_kernels")]
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  graph = import_graph()
  state: dict[str, int] = {}  # 1 = on the stack, 2 = done
  stack: list[str] = []
  cycles = []

  def visit(module):
    state[module] = 1
    stack.append(module)
    for dep in sorted(graph.get(module, ())):
      # A package's __init__ re-exporting its own submodules is not a cycle of the design.
      if dep.startswith(module + "."):
        continue
      if state.get(dep) == 1:
        cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module)
  assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source,expected", [
    ("from mdd.train import loop\n", {"mdd.train.loop"}),
    ("from mdd import sampling\n", {"mdd.sampling"}),
    ("import mdd.sampling.config as c\n", {"mdd.sampling.config"}),
    ("def f():\n  from ..train import loop\n", {"mdd.train.loop"}),
])
def test_graph_reads_imports(tmp_path, source, expected):
  """The reader itself, on a fake tree: imports (function-local and relative ones too) resolve
  to the project modules they name, and an upward one is caught."""
  for module in ("mdd/__init__.py", "mdd/train/__init__.py", "mdd/train/loop.py",
                 "mdd/sampling/__init__.py", "mdd/sampling/config.py", "mdd/utils/__init__.py"):
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
  (tmp_path / "mdd" / "utils" / "probe.py").write_text(source)
  graph = import_graph(str(tmp_path))
  assert graph["mdd.utils.probe"] == expected
  assert layer_of("mdd.utils.probe") < layer_of(next(iter(expected)))
