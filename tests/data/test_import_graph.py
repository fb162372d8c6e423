"""dualattn.data has no import cycle, and every module imports on its own in a fresh interpreter."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dualattn.data

DATA_DIR = Path(dualattn.data.__file__).parent
SRC = str(DATA_DIR.parents[1])


def _module_graph() -> dict[str, set[str]]:
    """``{module: modules of dualattn.data it imports}`` from the source (any import, even inside functions)."""
    pkg = "dualattn.data"
    modules = {p.stem: p for p in DATA_DIR.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from .x import y / from . import x
                    targets = [node.module] if node.module else [a.name for a in node.names]
                elif node.module and node.module.startswith(pkg + "."):
                    targets = [node.module[len(pkg) + 1:]]
                elif node.module == pkg:
                    targets = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name[len(pkg) + 1:] for a in node.names if a.name.startswith(pkg + ".")]
            deps |= {t.split(".")[0] for t in targets if t and t.split(".")[0] in modules}
        graph[name] = deps - {name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cyc := visit(m)):
                return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cyc := visit(n)):
            return cyc
    return None


def test_data_module_graph_is_acyclic():
    graph = _module_graph()
    assert {"base", "listops", "lra", "pathfinder"} <= set(graph)
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"
    # the LRA readers sit next to their generators; lra.py only gathers them
    assert "lra" not in graph["listops"] | graph["pathfinder"]
    assert graph["listops"] <= {"base"} and graph["pathfinder"] <= {"base"}


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


ISOLATED_IMPORT = """
import importlib, importlib.machinery, importlib.util, sys, traceback, types
src, names = sys.argv[1], sys.argv[2:]
failed = []
for name in names:
    for mod in [m for m in sys.modules if m == "dualattn.data" or m.startswith("dualattn.data.")]:
        del sys.modules[mod]
    # an empty stand-in for the package: its __init__ (which imports every loader) does not run,
    # so only the module and what it imports itself are executed, in the order they import
    pkg = types.ModuleType("dualattn.data")
    pkg.__path__ = [src + "/dualattn/data"]
    pkg.__spec__ = importlib.machinery.ModuleSpec("dualattn.data", None, is_package=True)
    sys.modules["dualattn.data"] = pkg
    try:
        importlib.import_module("dualattn.data." + name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
for mod in [m for m in sys.modules if m == "dualattn.data" or m.startswith("dualattn.data.")]:
    del sys.modules[mod]
try:  # and the real package, entered through lra (which used to close the listops <-> lra circle)
    import dualattn.data.lra, dualattn.data as d
    assert {"listops", "pathfinder"} <= set(d.available_datasets()), d.available_datasets()
except Exception:
    failed.append("package: " + traceback.format_exc().strip().splitlines()[-1])
print("FAILED" if failed else "OK", *failed, sep="\\n")
"""


def test_each_data_module_imports_alone():
    """Every module of dualattn.data imports without the package __init__ having run first
    (a fresh dualattn.data per module, in one interpreter so torch is imported once)."""
    names = sorted(p.stem for p in DATA_DIR.glob("*.py") if p.stem != "__init__")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", ISOLATED_IMPORT, SRC, *names], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr


@pytest.mark.parametrize("name", ["listops", "pathfinder", "lra"])
def test_lra_readers_reachable_from_their_generators(name):
    import importlib

    mod = importlib.import_module(f"dualattn.data.{name}")
    if name == "listops":
        assert callable(mod.load_lra_listops) and callable(mod.read_listops_tsv)
    elif name == "pathfinder":
        assert callable(mod.load_lra_pathfinder) and callable(mod.read_pathfinder_dir)
    else:
        from dualattn.data import listops, pathfinder

        assert mod.load_lra_listops is listops.load_lra_listops
        assert mod.load_lra_pathfinder is pathfinder.load_lra_pathfinder
