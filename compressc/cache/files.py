"""File-system helpers of the store: synced writes, errors that name the path, stale temps.

Every function here tolerates files that another process removes at the same moment
(two `compressc cache clear` at once): a vanished file is simply not counted.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

STALE_TEMP_SECONDS = 24 * 3600  # a temp this old is stale even if its pid is alive (pid reuse)


def write_synced(
    path: Path, data: bytes | str, error: type[Exception] = OSError, outcome: str = "nothing was published"
) -> None:
    """Write and fsync, so a renamed-in entry never holds unflushed (empty) files.

    An OSError (ENOSPC, EDQUOT, EACCES) becomes `error` naming `path` and the `outcome`.
    """
    try:
        with open(path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise write_error(path, err, error, outcome) from None


def write_error(
    path: Path, err: OSError, error: type[Exception] = OSError, outcome: str = "nothing was published"
) -> Exception:
    """`error` saying which path could not be written, why, what state it left and what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free space on that file system, or point COMPRESSC_CACHE_DIR elsewhere"
    else:
        hint = "check the permissions of the cache, or point COMPRESSC_CACHE_DIR elsewhere"
    return error(f"cannot write {path}: {err.strerror or err}; {outcome} ({hint})")


def is_stale_temp(path: Path) -> bool:
    """Whether a temp's writer is gone: tmp/<kind>.<pid>.<...> whose pid no longer runs,
    a temp named before temps carried their pid, or one older than a day (pid reuse)."""
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False  # removed meanwhile
    fields = path.name.split(".")
    pid = int(fields[1]) if len(fields) > 2 and fields[1].isdigit() else None
    if age > STALE_TEMP_SECONDS or pid is None:
        return True
    return not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def mtime(*candidates: Path) -> float:
    """The mtime of the first candidate that exists, 0.0 if none does."""
    for path in candidates:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (os.walk skips directories that vanish)."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def entry_dirs(root: Path) -> Iterator[Path]:
    """Every <root>/<xx>/<name> directory, skipping ones removed while scanning."""
    for shard in _subdirs(Path(root)):
        if len(shard.name) == 2:
            yield from _subdirs(shard)


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
