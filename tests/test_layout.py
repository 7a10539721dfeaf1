"""
The shape of the tree (docs/DEVELOPING.rst, "Layout of the code"): no import cycle among
the modules of ``realtime``, nor among its packages; no module of ``realtime`` over
:data:`MAX_MODULE_LINES` lines.

The import graph is read from the source with :mod:`ast` (every ``import`` statement,
at module level or inside a function), so a cycle hidden in a function-level import is
found as well.
"""

from __future__ import annotations

import ast
import os

from twisted.trial import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "realtime")

def source_modules() -> dict:
    """Dotted module name -> path, for every module of the realtime package."""
    modules = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                if dotted.endswith(".__init__"):
                    dotted = dotted[: -len(".__init__")]
                modules[dotted] = path
    return modules


def imports_of(module: str, path: str, modules: dict) -> set:
    """The realtime modules that ``module`` imports (anywhere in its source)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # ``from realtime.hub import registry`` imports the module realtime.hub.registry
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and name != "realtime":
                found.add(name)
    return found


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


class ImportGraphTests(unittest.TestCase):
    def test_no_import_cycle(self):
        """No two modules of realtime import each other, directly or through others."""
        modules = source_modules()
        graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
        self.assertIn("realtime.hub.gateway", graph["realtime.assembly"])  # the reader works
        self.assertEqual(cycles(graph), [])

    def test_packages_import_one_way(self):
        """
        Between packages too, imports run one way: no package imports one that imports it
        (each top-level module of realtime counts as a package of its own).
        """
        modules = source_modules()

        def area(name):
            parts = name.split(".")
            return ".".join(parts[:2])

        graph = {}
        for name, path in modules.items():
            for imported in imports_of(name, path, modules):
                if area(imported) != area(name):
                    graph.setdefault(area(name), set()).add(area(imported))
        self.assertIn("realtime.hub", graph["realtime.redis"])
        self.assertEqual(cycles(graph), [])

    def test_cycle_finder_finds_a_cycle(self):
        """The checker itself: a -> b -> c -> a is one cycle; d, importing a, is outside."""
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        self.assertEqual(cycles(graph), [["a", "b", "c"]])
        self.assertEqual(cycles({"a": {"b"}, "b": set()}), [])



#: the most lines a module of realtime may have (docs/DEVELOPING.rst: a module of a few
#: hundred lines with one job; past it, split along a real seam)
MAX_MODULE_LINES = 400


def oversized(modules: dict, limit: int = MAX_MODULE_LINES) -> list:
    """``(path relative to the repository, lines)`` of every module over ``limit`` lines,
    the longest first."""
    found = []
    for path in modules.values():
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > limit:
            found.append((os.path.relpath(path, REPO), lines))
    return sorted(found, key=lambda item: (-item[1], item[0]))


class ModuleSizeTests(unittest.TestCase):
    def test_no_module_over_the_limit(self):
        """
        No module of realtime is over MAX_MODULE_LINES (400) lines; the failure names every
        offender with its size.
        """
        modules = source_modules()
        self.assertIn("realtime.service", modules)  # the walk found the package
        offenders = oversized(modules)
        self.assertEqual(offenders, [], f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(
            f"{path} ({lines} lines)" for path, lines in offenders))

    def test_size_check_names_each_offender(self):
        """The checker itself: modules over the limit are named with their sizes, longest
        first; one at the limit is not."""
        folder = self.mktemp()
        os.makedirs(folder)
        sizes = {"big": 12, "bigger": 30, "at_limit": 10, "small": 1}
        modules = {}
        for name, lines in sizes.items():
            path = os.path.join(folder, name + ".py")
            with open(path, "w", encoding="utf-8") as f:
                f.write("x = 1\n" * lines)
            modules[name] = path
        relative = os.path.relpath(folder, REPO)
        self.assertEqual(oversized(modules, limit=10),
                         [(os.path.join(relative, "bigger.py"), 30),
                          (os.path.join(relative, "big.py"), 12)])
