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
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from importlib.machinery import PathFinder

_SUFFIXES = (".dist-info", ".egg-info")


class _NotCheap(Exception):
    """The directory scan might not give importlib.metadata's answer here."""


def entry_points(*, group: str) -> list[metadata.EntryPoint]:
    """The entry points of `group` of the installed distributions, as importlib.metadata lists them."""
    try:
        return _scan(group)
    except _NotCheap:
        return list(metadata.entry_points(group=group))


def _scan(group: str) -> list[metadata.EntryPoint]:
    if any(hasattr(f, "find_distributions") and f is not PathFinder for f in sys.meta_path):
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
