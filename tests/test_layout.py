"""The dependency direction of DESIGN.md: tui -> engine, never the reverse; task
harnesses and kernels never import the engine."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def python_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in (ROOT / f).rglob("*.py")]


# The command line starts the viewer (`threadlab tui`, `threadlab run`): the one exception.
CLI = ROOT / "engine" / "cli.py"


@pytest.mark.parametrize("path", [p for p in python_files("engine") if p != CLI], ids=str)
def test_engine_never_imports_the_tui(path):
    assert "tui" not in imported_roots(path)


def test_the_cli_imports_the_tui_only_inside_the_function_that_starts_it():
    tree = ast.parse(CLI.read_text())
    top_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)} | {
        a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.split(".")[0] == "tui" for m in top_level)


@pytest.mark.parametrize(
    "path", python_files("kernels", "benchmarks/tasks", "tests/fixtures") + [
        p for p in (ROOT / "tasks").rglob("*.py") if p.name != "__init__.py"
    ], ids=str,
)
def test_harnesses_never_import_the_engine(path):
    assert not imported_roots(path) & {"engine", "tui"}


def test_there_are_harness_files_to_check():
    assert python_files("tests/fixtures"), "the layout test would check nothing"
