"""Cache keys: sha256 over a canonical JSON of everything that decides a cubin's bytes.

Ingredients (docs/architecture.md §4): the printed spec IR, the pipeline string, the arch, the
compile options, compressc's version, a fingerprint of compressc's compiler sources and
the toolchain (CuTe DSL version and flavour, nvJitLink version). Nothing here imports
cutlass, so a key costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from compressc.cache.arch import normalize_arch

KEY_FORMAT = 1
# Compiler sources whose bytes decide what a build emits (relative to the package root).
COMPILER_SOURCES = ("ir", "passes", "kernels", "specs", "driver/compile.py")


def key_ingredients(
    spec_ir_text: str,
    pipeline: str,
    arch: str,
    options: str,
    *,
    compressc_version: str,
    source_fingerprint: str,
    toolchain: dict[str, str],
) -> dict[str, Any]:
    """Every ingredient of the key, by name (what `compressc cache why` prints and diffs)."""
    return {
        "key_format": KEY_FORMAT,
        "spec_ir": spec_ir_text,
        "pipeline": pipeline,
        "arch": normalize_arch(arch),
        "options": options,
        "compressc_version": compressc_version,
        "source_fingerprint": source_fingerprint,
        "toolchain": dict(toolchain),
    }


def cache_key(
    spec_ir_text: str,
    pipeline: str,
    arch: str,
    options: str,
    *,
    compressc_version: str,
    source_fingerprint: str,
    toolchain: dict[str, str],
) -> str:
    """The hex sha256 of the canonical JSON of `key_ingredients(...)`."""
    ingredients = key_ingredients(
        spec_ir_text,
        pipeline,
        arch,
        options,
        compressc_version=compressc_version,
        source_fingerprint=source_fingerprint,
        toolchain=toolchain,
    )
    return hash_ingredients(ingredients)


def hash_ingredients(ingredients: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(ingredients)).hexdigest()


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def source_fingerprint(root: Path | None = None) -> str:
    """sha256 over (relative path, bytes) of every compiler source file, sorted by path."""
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    digest = hashlib.sha256()
    for path in compiler_sources(root):
        relative = path.relative_to(root).as_posix()
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def compiler_sources(root: Path) -> list[Path]:
    """The .py files under `root` named by COMPILER_SOURCES, sorted by relative path."""
    files: list[Path] = []
    for name in COMPILER_SOURCES:
        path = root / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
