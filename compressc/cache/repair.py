"""`compressc cache verify --repair`: bring a store back to a consistent state (issue 17).

After a kill or ENOSPC between an entry's rename and its index write, a bad index file,
a hand-edited manifest or an interrupted publish, a store can hold entries no index
names, index files naming nothing, tampered entries and stale temp dirs. `repair`:

1. removes stale temp dirs (their writer is gone),
2. removes every bad entry (corrupt, tampered, or a cubin whose .nv.info disagrees
   with its manifest): each is a miss anyway, and a build replaces it,
3. points each variant@arch's index at its preferred entry: the one `prefer` accepts
   (the CLI passes "this compressc's default build"), else the newest,
4. removes index files that are unreadable or name no entry of their own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from compressc.cache.files import mtime
from compressc.cache.integrity import cubin_problem
from compressc.cache.store import MANIFEST, Entry, Store

Prefer = Callable[[Entry], bool]


def deep_problems(store: Store, check_cubins: bool = True) -> list[tuple[Path, str]]:
    """store.verify() plus each valid entry whose cubin's .nv.info disagrees with its manifest."""
    problems = store.verify()
    for entry in store.entries() if check_cubins else []:
        problem = cubin_problem(entry.manifest, entry.cubin_bytes())
        if problem:
            problems.append((entry.path, problem))
    return problems


def repair(store: Store, prefer: Prefer | None = None, *, check_cubins: bool = True) -> list[str]:
    """Repair `store` in place; one line per action taken ([] when it was consistent).

    check_cubins: also parse each cubin's .nv.info (False only for stores of fake cubins).
    """
    actions = [f"removed {p}: leftover of an interrupted publish" for p in store.remove_stale_temps()]
    actions += _remove_bad_entries(store, check_cubins)
    groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in store.entries():
        groups[(entry.manifest["variant"], entry.manifest["arch"])].append(entry)
    for (variant, arch), entries in sorted(groups.items()):
        chosen = _choose(entries, prefer)
        if store.point_index(chosen):
            actions.append(f"index {variant}@{arch} now names {chosen.key}")
    actions += _drop_stray_index_files(store, set(groups))
    return actions


def _remove_bad_entries(store: Store, check_cubins: bool) -> list[str]:
    actions = []
    for path, problem in deep_problems(store, check_cubins):
        if path.parent.name == path.name[:2] and path.parent.parent == store.root and path.is_dir():
            store.remove_entry(path.name)
            actions.append(f"removed {path}: {problem}")
    return actions


def _choose(entries: list[Entry], prefer: Prefer | None) -> Entry:
    preferred = [e for e in entries if prefer is not None and prefer(e)] or entries
    return max(preferred, key=lambda e: (mtime(e.path / MANIFEST), e.key))


def _drop_stray_index_files(store: Store, labels: set[tuple[str, str]]) -> list[str]:
    actions = []
    for path in sorted((store.root / "index").glob("*.json")):
        variant, _, arch = path.stem.rpartition("@")
        if (variant, arch) not in labels:
            path.unlink(missing_ok=True)
            actions.append(f"removed {path}: it names no valid entry")
    return actions
