"""The content-addressed kernel store (docs/architecture.md §4): the user cache and kernel packs.

Layout of a root:

  <key[:2]>/<key>/kernel.cubin, manifest.json, spec.cir, lowered.cir, kernel_py.txt, ...
  index/<variant>@<arch>.json   {"key": ...}: the newest default-pipeline build of a variant
  locks/<key>.lock              flock'd while a process builds that key (holds its pid)
  tmp/<kind>.<pid>.<...>        entries being written, entries being deleted, index files
                                being written; renamed into place when complete

An entry appears with one `os.replace` of a finished directory, so readers never see
half an entry; anything unreadable, inconsistent or tampered with is a miss. A temp
whose writer is gone (killed mid-publish) is stale: `verify` reports it, `prune`,
`clear` and `repair` (compressc.cache.repair) remove it. Removal tolerates entries
that another process removes at the same time (two `cache clear`s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from compressc.cache.arch import normalize_arch
from compressc.cache.files import entry_dirs, is_stale_temp, mtime, tree_size, write_error, write_synced
from compressc.cache.integrity import ingredients_problem, launch_problem, read_ingredients
from compressc.cache.lock import DEFAULT_TIMEOUT, file_lock
from compressc.cache.manifest import validate_manifest

log = logging.getLogger("compressc.cache")
MANIFEST = "manifest.json"
# The generated CuTe DSL source is kept as text under a name that is not `*.py`: pip
# byte-compiles every .py file a wheel installs (check-wheel-contents W004), and this one
# is a record of the build, never imported. Entries written before the rename hold kernel.py.
KERNEL_SOURCE = "kernel_py.txt"
LEGACY_KERNEL_SOURCE = "kernel.py"
_KEY = re.compile(r"^[0-9a-f]{64}$")
_NO_INDEX = (
    "the entry is in place without its index: the next build or `compressc cache verify --repair` restores it"
)
Files = Mapping[str, bytes | str]
BuildFn = Callable[[], "tuple[dict[str, Any], Files] | Entry"]


class StoreError(RuntimeError):
    """A store operation was refused; the message names the key or path and why."""


class CorruptEntryError(StoreError):
    """An entry's bytes no longer match its manifest."""


class ReadOnlyStoreError(StoreError):
    """A write was asked of a store opened read-only (an installed kernel pack)."""


# A NamedTuple, not a dataclass: as immutable, and 0.05 ms to define instead of 0.4 ms, on the
# runtime's cold-start path (benchmarks/NOTES.md, session 8).
class Entry(NamedTuple):
    """One complete cache entry. `cubin_bytes()` re-checks the sha256 on every load."""

    path: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def cubin_bytes(self) -> bytes:
        path = self.path / self.manifest["cubin"]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CorruptEntryError(
                f"cannot read {path}: {err.strerror}; rebuild it or run `compressc cache verify`"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.manifest["cubin_sha256"]:
            raise CorruptEntryError(
                f"{path} has sha256 {digest}, its manifest says {self.manifest['cubin_sha256']}: "
                "the file was modified after it was cached; run `compressc cache verify`"
            )
        return data

    def text(self, name: str) -> str | None:
        """A stage text of this entry (spec.cir, lowered.cir, kernel_py.txt, ...), None if absent."""
        path = self.path / name
        if name == KERNEL_SOURCE and not path.is_file():
            path = self.path / LEGACY_KERNEL_SOURCE
        return path.read_text() if path.is_file() else None


class Store:
    def __init__(self, root: Path, readonly: bool = False, lock_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.root = Path(root)
        self.readonly = readonly or (self.root.exists() and not os.access(self.root, os.W_OK))
        self.lock_timeout = lock_timeout
        self.stats: Counter[str] = Counter()

    def entry_path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key[:2] / key

    # -- reading ----------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry of `key`, or None (a miss) if it is missing, corrupt or tampered with."""
        entry, problem = self._load(key)
        self.stats["hits" if entry else "misses"] += 1
        if problem:
            kind = problem.split(":")[0]
            self.stats[kind] += 1
            (log.debug if kind == "missing" else log.warning)("cache miss %s: %s", key, problem)
        return entry

    def problem(self, key: str) -> str | None:
        """Why `key` is a miss ("missing: ...", "corrupt: ...", "tampered: ..."), None on a hit."""
        return self._load(key)[1]

    def find(self, variant: str, arch: str) -> Entry | None:
        """The entry the index names for (variant, arch), or None."""
        key = _index_key(self.index_path(variant, arch))
        if key is None:
            self.stats["misses"] += 1
            log.debug("index miss %s", self.index_path(variant, arch))
            return None
        return self.get(key)

    def index_path(self, variant: str, arch: str) -> Path:
        return self.root / "index" / f"{variant}@{normalize_arch(arch)}.json"

    def indexed_key(self, variant: str, arch: str) -> str | None:
        """The key the index names for (variant, arch); None if there is no readable index."""
        return _index_key(self.index_path(variant, arch))

    def lock_path(self, key: str) -> Path:
        _check_key(key)
        return self.root / "locks" / f"{key}.lock"

    def point_index(self, entry: Entry) -> bool:
        """Make the index of the entry's variant@arch name it; True if the index changed."""
        path = self.index_path(entry.manifest["variant"], entry.manifest["arch"])
        if _index_key(path) == entry.key:
            return False
        self._writable()
        self._write_index(entry.manifest, entry.key)
        return True

    def _load(self, key: str) -> tuple[Entry | None, str | None]:
        path = self.entry_path(key)
        if not path.is_dir():
            return None, "missing: no entry directory"
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            if not path.is_dir():  # removed since the check above (a concurrent clear)
                return None, "missing: no entry directory"
            return None, f"corrupt: {path / MANIFEST} is missing (half-written entry)"
        except (OSError, ValueError) as err:
            return None, f"corrupt: {path / MANIFEST} is unreadable: {err}"
        problem = _manifest_problem(key, manifest) or _cubin_problem(path, manifest)
        problem = problem or ingredients_problem(key, manifest, read_ingredients(path))
        return (None, problem) if problem else (Entry(path, manifest), None)

    def _entry_dirs(self) -> list[Path]:
        dirs = [p for p in entry_dirs(self.root) if _KEY.match(p.name) and p.parent.name == p.name[:2]]
        return sorted(dirs, key=lambda p: p.name)

    def entries(self) -> list[Entry]:
        """Every valid entry, sorted by key."""
        return [entry for p in self._entry_dirs() if (entry := self._load(p.name)[0])]

    def verify(self) -> list[tuple[Path, str]]:
        """(path, problem) for every bad entry, leftover temp dir and dangling index file."""
        problems = [(p, problem) for p in self._entry_dirs() if (problem := self._load(p.name)[1])]
        leftover = "leftover temporary directory of an interrupted publish"
        problems += [(p, leftover) for p in self.stale_temps()]
        for path in sorted((self.root / "index").glob("*.json")):
            key = _index_key(path)
            if key is None or self._load(key)[0] is None:
                problems.append((path, f"index names {key or 'no valid key'}, which is not a valid entry"))
        return problems

    # -- writing ----------------------------------------------------------------------
    def publish(self, key: str, manifest: dict[str, Any], files: Files, *, index: bool = True) -> Entry:
        """Write an entry: files into a temp dir, manifest.json last, one rename into place.

        `index`: point variant@arch's index at it (what the runtime's lookup by index
        serves); builds of a non-default pipeline pass False. On a write error
        (ENOSPC, EACCES) nothing of the entry is left and StoreError names the path.
        """
        self._writable()
        _check_publish(key, manifest, files)
        tmp = self._new_temp("entry", key)
        try:
            for name, data in files.items():
                write_synced(tmp / name, data, StoreError)
            write_synced(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n", StoreError)
            self._move_into_place(key, tmp)
        except (OSError, StoreError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, StoreError):
                raise
            raise write_error(self.entry_path(key), err, StoreError) from None
        if index:
            self._write_index(manifest, key)
        self.stats["publishes"] += 1
        return Entry(self.entry_path(key), manifest)

    def get_or_build(self, key: str, build_fn: BuildFn) -> Entry:
        """The entry of `key`, built by `build_fn()` if missing.

        `build_fn` returns (manifest, files) for this method to publish, or the Entry
        it published itself. An exclusive flock on locks/<key>.lock makes N processes
        asking for the same key build it once: the others wait, then find it on
        their second look.
        """
        entry = self.get(key)
        if entry is not None:
            return entry
        self._writable()
        with file_lock(self.lock_path(key), self.lock_timeout):
            entry, _ = self._load(key)
            if entry is not None:
                return entry
            built = build_fn()
            self.stats["builds"] += 1
            if isinstance(built, Entry):
                return built
            manifest, files = built
            return self.publish(key, manifest, files)

    def prune(self, max_bytes: int) -> list[str]:
        """Delete entries, oldest manifest mtime first, until the store holds <= max_bytes."""
        self._writable()
        sized = sorted((mtime(p / MANIFEST, p), tree_size(p), p.name) for p in self._entry_dirs())
        total, removed = sum(s for _, s, _ in sized), []
        for _, size, key in sized:
            if total <= max_bytes:
                break
            self.remove_entry(key)
            total, removed = total - size, removed + [key]
        self._drop_dangling_index()
        self.remove_stale_temps()
        return removed

    def clear(self) -> None:
        """Delete every entry, the index and stale temp dirs (lock files and live publishes stay)."""
        self._writable()
        for path in self._entry_dirs():
            self.remove_entry(path.name)
        shutil.rmtree(self.root / "index", ignore_errors=True)
        self.remove_stale_temps()

    def stale_temps(self) -> list[Path]:
        """Temp dirs and files whose writer is gone (or that are older than a day)."""
        return [path for path in self._temps() if is_stale_temp(path)]

    def remove_stale_temps(self) -> list[Path]:
        removed = []
        for path in self.stale_temps():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    # -- helpers ----------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyStoreError(
                f"the kernel store at {self.root} is read-only; "
                "build into the user cache (COMPRESSC_CACHE_DIR) instead"
            )

    def _new_temp(self, kind: str, name: str, *, mkdir: bool = True) -> Path:
        """tmp/<kind>.<pid>.<name>.<random>: the pid says whether its writer still runs."""
        path = self.root / "tmp" / f"{kind}.{os.getpid()}.{name}.{uuid.uuid4().hex[:8]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if mkdir:
                path.mkdir()
        except OSError as err:
            raise write_error(path, err, StoreError) from None
        return path

    def _temps(self) -> list[Path]:
        try:
            return sorted((self.root / "tmp").iterdir())
        except FileNotFoundError:
            return []

    def _move_into_place(self, key: str, tmp: Path) -> None:
        target = self.entry_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, target)
            return
        except OSError:
            pass  # the target exists and is not empty
        if self._load(key)[0] is not None:
            shutil.rmtree(tmp)  # an identical build won the race; keep it
            return
        self.remove_entry(key)  # a corrupt entry: replace it
        os.replace(tmp, target)

    def remove_entry(self, key: str) -> None:
        """Rename the entry away first so no reader ever sees it half-deleted.

        An entry another process removed meanwhile (a concurrent clear or prune) is gone
        already, which is what was asked.
        """
        trash = self._new_temp("trash", key, mkdir=False)
        try:
            os.replace(self.entry_path(key), trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _write_index(self, manifest: dict[str, Any], key: str) -> None:
        tmp = self._new_temp("index", "json", mkdir=False)
        path = self.index_path(manifest["variant"], manifest["arch"])
        try:
            write_synced(tmp, json.dumps({"key": key}) + "\n", StoreError, _NO_INDEX)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except (OSError, StoreError) as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, StoreError):
                raise
            raise write_error(path, err, StoreError, _NO_INDEX) from None

    def _drop_dangling_index(self) -> None:
        for path in (self.root / "index").glob("*.json"):
            key = _index_key(path)
            if key is None or not self.entry_path(key).is_dir():
                path.unlink(missing_ok=True)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY.match(key):
        raise StoreError(f"{key!r} is not a cache key (64 lowercase hex digits)")


def _check_publish(key: str, manifest: dict[str, Any], files: Files) -> None:
    _check_key(key)
    problems = validate_manifest(manifest)
    if not problems and manifest["key"] != key:
        problems = [f"manifest key {manifest['key']} differs from the key it is published under"]
    if not problems and (unsealed := launch_problem(manifest)):
        problems = [unsealed.split(": ", 1)[1]]
    bad_names = [n for n in files if n == MANIFEST or "/" in n or "\\" in n or n.startswith(".") or not n]
    problems += [f"file name {n!r} is not allowed (plain names only, not {MANIFEST})" for n in bad_names]
    cubin = files.get(manifest.get("cubin", ""))
    if not problems and not isinstance(cubin, bytes):
        problems = [f"files has no {manifest['cubin']!r} bytes"]
    elif not problems and hashlib.sha256(cubin).hexdigest() != manifest["cubin_sha256"]:
        problems = [f"{manifest['cubin']} does not have the manifest's cubin_sha256"]
    if problems:
        raise StoreError(f"refusing to publish {key}: " + "; ".join(problems))


def _manifest_problem(key: str, manifest: Any) -> str | None:
    problems = validate_manifest(manifest)
    if problems:
        return "corrupt: invalid manifest: " + "; ".join(problems)
    if manifest["key"] != key:
        return f"corrupt: manifest key {manifest['key']} does not match the entry directory"
    return launch_problem(manifest)


def _cubin_problem(path: Path, manifest: dict[str, Any]) -> str | None:
    cubin = path / manifest["cubin"]
    try:
        digest = hashlib.sha256(cubin.read_bytes()).hexdigest()
    except OSError as err:
        return f"corrupt: {cubin} is unreadable: {err.strerror}"
    if digest != manifest["cubin_sha256"]:
        return f"tampered: {cubin} has sha256 {digest}, the manifest says {manifest['cubin_sha256']}"
    return None


def _index_key(path: Path) -> str | None:
    try:
        key = json.loads(path.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) and _KEY.match(key) else None
