"""`ttt/`'s import graph: no cycles, function-level imports included (a
module never imports one that imports it back, however late; the sampling
half's own check: `sampling_test.test_the_sampling_package_has_no_import_
cycle`)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(package: str) -> dict[str, str]:
  """{dotted module name: path} of every module of `package`."""
  out = {}
  for folder, _, names in os.walk(os.path.join(ROOT, package)):
    for name in names:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
        dotted = rel.replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = os.path.join(folder, name)
  return out


def _imports(path: str, name: str, known: set[str], package: str
             ) -> set[str]:
  """The modules of `known` that the module at `path` imports, anywhere in
  its body (`from a import b` counts `a.b` when that is a module, else
  `a`; a relative import is resolved against `name`)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith("__init__.py")
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = name.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in known and "." in t:  # a name inside a module
        t = t.rsplit(".", 1)[0]
      if t in known and t != name and t.split(".")[0] == package:
        out.add(t)
  return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` (a list of modules, first == last), or
  None."""
  state: dict[str, int] = {}  # 1: on the path, 2: done
  path: list[str] = []

  def visit(m):
    state[m] = 1
    path.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        return path[path.index(n):] + [n]
      if n not in state:
        found = visit(n)
        if found:
          return found
    path.pop()
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_the_cycle_finder_finds_one():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_ttt():
  package = "ttt"
  modules = _modules(package)
  graph = {m: _imports(p, m, set(modules), package)
           for m, p in modules.items()}
  # a package's __init__ importing its own modules is how registries are
  # built; a module importing its package back is a cycle through it
  assert sum(len(v) for v in graph.values()) > len(modules) // 2  # parsed
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))
