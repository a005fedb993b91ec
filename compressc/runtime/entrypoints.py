"""Entry points of one group, read straight from the `*.dist-info` directories on sys.path.

`importlib.metadata.entry_points(group=...)` builds a Distribution object per installed
package and parses every package's entry_points.txt: 2-6 ms of a cold start with ~120
packages installed, for the one or two kernel packs. This reads the same files the same
way and returns the same list (tests/test_runtime_entrypoints.py compares the two):

- the same places: the directories of sys.path in order (importlib.metadata's
  `MetadataPathFinder` is what finds installed distributions there);
- the same packages: a child named `<name>-<rest>.dist-info` or `.egg-info`, the first
  of each normalized name winning (`entry_points()` drops later duplicates the same way);
- the same parse: stripped lines, `#` comments, `[group]` headers, `name = value`.

Only files that mention `[group]` are parsed. Where the cheap route could differ from
importlib.metadata (another meta-path finder that finds distributions, a zip or an
`.egg` on sys.path, a metadata directory whose suffix is not lower-case) it is not
taken: `importlib.metadata.entry_points` answers instead.

`recorded_entry_points` spares a fresh process even the scan (1.5-4 ms of a cold start):
a record in the user cache keeps the scan's answer for the sys.path it saw, each entry
with its modification time, and is trusted while they are unchanged, the rule
importlib.metadata's own per-directory cache uses (installing or removing a package adds or
removes a directory there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from importlib import metadata
from importlib.machinery import PathFinder
from pathlib import Path

_SUFFIXES = (".dist-info", ".egg-info")
RECORD_FORMAT = 1
RACY_NS = 2_000_000_000  # a sys.path entry modified this close to the scan may change again unseen


class _NotCheap(Exception):
    """The directory scan might not give importlib.metadata's answer here."""


def entry_points(*, group: str) -> list[metadata.EntryPoint]:
    """The entry points of `group` of the installed distributions, as importlib.metadata lists them."""
    try:
        return _scan(group)
    except _NotCheap:
        return list(metadata.entry_points(group=group))


def recorded_entry_points(*, group: str, record_dir: Path | None) -> list[metadata.EntryPoint]:
    """`entry_points(group=...)`, from the record in `record_dir` while sys.path and the
    modification times of its entries are those the record lists; else scanned and the
    record rewritten (best effort: an unwritable directory only costs the scan). As for the
    compiler's source fingerprint (driver/key.py), a record is not trusted for an entry
    modified within RACY_NS of its writing: a coarse file-system clock could hide a change."""
    if record_dir is None or _other_finders():
        return entry_points(group=group)
    state = [[os.path.abspath(p or "."), _mtime_ns(p or ".")] for p in sys.path]
    path = Path(record_dir) / "entry_points" / f"{hashlib.sha256(group.encode()).hexdigest()[:24]}.json"
    found = _recorded(path, group, state)
    if found is not None:
        return found
    written = time.time_ns()
    try:
        found = _scan(group)
    except _NotCheap:
        return list(metadata.entry_points(group=group))
    if all(mtime < written - RACY_NS for _, mtime in state):
        from compressc.cache.files import write_record

        write_record(path, {"format": RECORD_FORMAT, "group": group, "sys_path": state,
                            "entry_points": [[e.name, e.value] for e in found]})
    return found


def _recorded(path: Path, group: str, state: list[list]) -> list[metadata.EntryPoint] | None:
    try:
        record = json.loads(path.read_text())
        if record["format"] == RECORD_FORMAT and record["group"] == group and record["sys_path"] == state:
            return [metadata.EntryPoint(name, value, group) for name, value in record["entry_points"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _other_finders() -> bool:
    """Another meta-path finder that finds distributions: only importlib.metadata knows them."""
    return any(hasattr(f, "find_distributions") and f is not PathFinder for f in sys.meta_path)


def _scan(group: str) -> list[metadata.EntryPoint]:
    if _other_finders():
        raise _NotCheap
    header, seen, found = f"[{group}]", set(), []
    for root in sys.path:
        for name, path in _metadata_dirs(root or "."):
            if name in seen:
                continue
            seen.add(name)
            found += _read(os.path.join(path, "entry_points.txt"), header, group)
    return found


def _metadata_dirs(root: str) -> list[tuple[str, str]]:
    """(normalized name, path) of the metadata directories directly in `root`, in listing order."""
    if not os.path.isdir(root):
        if os.path.exists(root):  # a zip on sys.path: importlib.metadata reads inside it
            raise _NotCheap
        return []
    if os.path.basename(root).lower().endswith(".egg"):
        raise _NotCheap
    try:
        children = os.listdir(root)
    except OSError:
        return []
    out = []
    for child in children:
        if not child.lower().endswith(_SUFFIXES):
            continue
        if not child.endswith(_SUFFIXES):  # importlib would read the name from METADATA
            raise _NotCheap
        out.append((_normalize(child.rpartition(".")[0].partition("-")[0]), os.path.join(root, child)))
    return out


def _normalize(name: str) -> str:
    """importlib.metadata's Prepared.normalize (PEP 503, then '-' as '_')."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _read(path: str, header: str, group: str) -> list[metadata.EntryPoint]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:  # no entry points (or an .egg-info file): importlib.metadata reads none either
        return []
    if header not in text:
        return []
    out, section = [], None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section == group:
            if "=" not in line:  # importlib.metadata raises on it: let it
                raise _NotCheap
            name, _, value = line.partition("=")
            out.append(metadata.EntryPoint(name.strip(), value.strip(), group))
    return out
