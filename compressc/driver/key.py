"""Cache keys: sha256 over a canonical JSON of everything that decides a cubin's bytes.

Ingredients (docs/architecture.md §4): the printed spec IR, the pipeline string, the arch, the
compile options, compressc's version, a fingerprint of compressc's compiler sources and
the toolchain (CuTe DSL version and flavour, nvJitLink version). Nothing here imports
cutlass, so a key costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
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


# -- the fingerprint of a cold start: hashed once, then checked by stat ---------------------------
RECORD_FORMAT = 1
RACY_NS = 2_000_000_000  # an mtime this close to the record's writing may hide a later same-size edit


def recorded_source_fingerprint(record_dir: Path | None, root: Path | None = None) -> str:
    """`source_fingerprint(root)`, taken from a record in `record_dir` when every compiler
    source still has the (relative path, size, mtime_ns) the record lists, else hashed and
    the record rewritten (best effort: an unwritable directory only costs the hash).

    The staleness rule of Python's own bytecode cache (source size and mtime), made stricter:
    nanosecond mtimes, the full list of files (one added or removed is a change), and, as
    git does for "racily clean" files, no trust in a record written within RACY_NS of a
    source's mtime (an edit in the same clock tick as the hashing keeps the mtime).
    """
    root = Path(__file__).resolve().parents[1] if root is None else Path(root)
    stats = source_stats(root)
    path = None if record_dir is None else _record_path(Path(record_dir), root)
    recorded = _read_record(path) if path is not None else None
    if recorded is not None and recorded.get("root") == str(root) and recorded.get("files") == stats:
        return str(recorded["fingerprint"])
    fingerprint = source_fingerprint(root)
    if path is not None:
        _write_record(path, root, stats, fingerprint)
    return fingerprint


def source_stats(root: Path) -> list[list[Any]]:
    """[relative path, size, mtime_ns] of the files `compiler_sources(root)` lists, in its order
    (os.scandir: a third of the time of rglob and Path.stat)."""
    out: list[list[Any]] = []
    for name in COMPILER_SOURCES:
        _scan_sources(os.path.join(root, name), name, out)
    return sorted(out)


def _scan_sources(path: str, relative: str, out: list[list[Any]]) -> None:
    try:
        entries = list(os.scandir(path))
    except NotADirectoryError:
        st = os.stat(path)
        out.append([relative, st.st_size, st.st_mtime_ns])
        return
    except FileNotFoundError:
        return
    for entry in entries:
        child = f"{relative}/{entry.name}"
        if entry.is_dir():
            _scan_sources(entry.path, child, out)
        elif entry.name.endswith(".py"):
            st = entry.stat()
            out.append([child, st.st_size, st.st_mtime_ns])


def _record_path(record_dir: Path, root: Path) -> Path:
    return record_dir / "fingerprints" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    written = record.get("written_ns")
    files = record.get("files")
    if not isinstance(written, int) or not isinstance(files, list):
        return None
    # racily clean: a source modified within RACY_NS of the hashing may have been edited again since
    if any(not isinstance(f, list) or len(f) != 3 or f[2] >= written - RACY_NS for f in files):
        return None
    return record


def _write_record(path: Path, root: Path, stats: list[list[Any]], fingerprint: str) -> None:
    import time

    record = {"format": RECORD_FORMAT, "root": str(root), "written_ns": time.time_ns(), "files": stats,
              "fingerprint": fingerprint}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(record))
        os.replace(temp, path)  # atomic: a reader sees the old record or the new one
    except OSError:
        pass
