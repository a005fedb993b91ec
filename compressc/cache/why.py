"""Why a cache lookup missed: the key ingredients recorded in entries, and how they differ.

Entries built since `key.json` existed hold the exact canonical JSON hashed into their
key (sha256(key.json) == key), so a miss can be explained ingredient by ingredient.
Older entries only record some ingredients in their manifest (arch, pipeline,
compressc_version, toolchain); those are compared and the rest reported as unknown.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from compressc.cache.store import Entry, Store

KEY_FILE = "key.json"
MANIFEST_INGREDIENTS = ("arch", "pipeline", "compressc_version", "toolchain")


@dataclass(frozen=True, slots=True)
class Nearest:
    entry: Entry
    differs: tuple[str, ...]  # ingredient names whose values differ
    complete: bool  # False: the entry has no key.json, only MANIFEST_INGREDIENTS were compared
    recorded: dict[str, Any]


def recorded_ingredients(entry: Entry) -> tuple[dict[str, Any], bool]:
    """(ingredients, complete): key.json when present and matching the key, else the manifest's subset."""
    try:
        data = (entry.path / KEY_FILE).read_bytes()
        if hashlib.sha256(data).hexdigest() == entry.key:
            return json.loads(data), True
    except (OSError, ValueError):
        pass
    return {name: entry.manifest[name] for name in MANIFEST_INGREDIENTS if name in entry.manifest}, False


def differing(now: dict[str, Any], recorded: dict[str, Any]) -> tuple[str, ...]:
    return tuple(name for name in now if name in recorded and recorded[name] != now[name])


def nearest_entry(store: Store, variant: str, arch: str, now: dict[str, Any]) -> Nearest | None:
    """The entry of variant@arch whose ingredients differ least from `now` (newest on a tie)."""
    best: tuple[tuple[int, float], Nearest] | None = None
    for entry in store.entries():
        if (entry.manifest["variant"], entry.manifest["arch"]) != (variant, arch):
            continue
        recorded, complete = recorded_ingredients(entry)
        candidate = Nearest(entry, differing(now, recorded), complete, recorded)
        rank = (len(candidate.differs), -(entry.path / "manifest.json").stat().st_mtime)
        if best is None or rank < best[0]:
            best = (rank, candidate)
    return best[1] if best else None


def describe_difference(name: str, was: Any, now: Any) -> list[str]:
    """Readable lines for one differing ingredient: a unified diff for texts, old -> new otherwise."""
    if isinstance(was, dict) and isinstance(now, dict):
        return [
            f"{name}.{k}: {was.get(k)!r} -> {now.get(k)!r}"
            for k in sorted(set(was) | set(now))
            if was.get(k) != now.get(k)
        ]
    if isinstance(was, str) and isinstance(now, str) and ("\n" in was or "\n" in now):
        diff = difflib.unified_diff(was.splitlines(), now.splitlines(), "cached", "now", lineterm="", n=1)
        return [f"{name}:"] + [f"  {line}" for line in diff]
    return [f"{name}: {was!r} -> {now!r}"]
