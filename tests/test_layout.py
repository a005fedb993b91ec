"""The package layout's size rule for the compiler's decision code (issue 13, item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compressc"
MAX_FUNCTION_LINES = 40  # passes/ and kernels/: a decision or an op's emitter reads in one screen


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    nodes = (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return [(f"{path.name}:{n.lineno} {n.name}", n.end_lineno - n.lineno + 1) for n in nodes]


@pytest.mark.parametrize("package", ["passes", "kernels"])
def test_no_function_in_the_decision_packages_is_over_40_lines(package: str) -> None:
    files = sorted((PACKAGE / package).glob("*.py"))
    assert files, package
    long = [f"{name} ({lines} lines)" for path in files for name, lines in _functions(path)
            if lines > MAX_FUNCTION_LINES]
    assert long == []


def test_the_driver_store_and_packs_are_packages_of_their_own() -> None:
    expected = {"driver": {"plan", "key", "compile", "cubin", "build"},
                "packs": {"installed", "wanted", "wheel"},
                "cache": {"store", "manifest", "integrity", "lock", "files", "repair", "why", "arch"}}
    for package, modules in expected.items():
        found = {p.stem for p in (PACKAGE / package).glob("*.py")} - {"__init__"}
        assert found == modules, package
