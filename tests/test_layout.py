"""The house rules of the code: ruff is clean, every module imports on its own, no import cycle, and no two
modules share a name."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zfexp", "callbacks")


def module_files() -> dict[str, Path]:
    """``{"zfexp.analysis.deconv": path, "zfexp.analysis": path/__init__.py, ...}`` for the installed packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """Every module ``path`` imports, at load time or inside a function (two modules that import each other
    lazily are as tangled as two that do it at the top), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Edges between our own modules. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b`` first, except
    those the importing module already sits in (they are being imported already)."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        edges = set()
        for target in imports_of(path, name, path.name == "__init__.py"):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix not in ancestors and prefix != name:
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(module_files()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_cycle():
    # The control: a graph with a cycle through a package, as the two sweep summarisers once had.
    graph = {"s.summarize": {"s.transfer"}, "s.transfer": {"s.paper", "s.summarize"}, "s.paper": set()}
    assert find_cycle(graph) == ["s.summarize", "s.transfer", "s.summarize"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_two_modules_share_a_name():
    names = Counter(path.stem for path in module_files().values() if path.stem != "__init__")
    assert [name for name, count in names.items() if count > 1] == []


def test_no_module_is_over_300_lines():
    long = {name: n for name, path in module_files().items() if (n := len(path.read_text().splitlines())) > 300}
    assert long == {}, f"split these by what their parts do: {long}"


def test_the_training_task_reads_as_a_recipe():
    assert len((ROOT / "zfexp" / "training.py").read_text().splitlines()) < 150


def test_the_lightning_module_knows_nothing_of_runs_and_loggers():
    graph = import_graph()
    assert {m for m in graph["zfexp.module"] if m.startswith("zfexp.runs")} == set()
    assert "zfexp.runs.loggers" not in {m for dep in graph["zfexp.module"] for m in graph[dep]}
