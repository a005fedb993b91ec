"""pyproject.toml: every declared dependency is used, and the licence is shipped and declared."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# distribution name -> the top-level import it provides
IMPORT_OF = {"cuda-bindings": "cuda.bindings", "cuda-core": "cuda.core"}


def imported_modules() -> set[str]:
    """Every module named by an import statement anywhere in the compressc package."""
    names: set[str] = set()
    for path in (REPO / "compressc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def test_every_runtime_dependency_is_imported():
    imported = imported_modules()
    for requirement in PYPROJECT["project"]["dependencies"]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement)[0]
        module = IMPORT_OF.get(dist, dist.replace("-", "_"))
        assert any(name == module or name.startswith(module + ".") for name in imported), (
            f"{dist} is declared in pyproject.toml but compressc never imports {module}"
        )


def test_licence_file_and_metadata():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
