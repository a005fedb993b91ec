"""An exclusive advisory file lock (fcntl.flock), held by one process at a time.

flock locks belong to the open file description, so two processes (or two opens in
one process) exclude each other; the kernel drops the lock if the holder dies, so a
crashed build never leaves a stale lock behind. A holder that is alive but stuck
(SIGSTOP, a hung compiler) is not dropped, so waiters poll with a timeout, write a
warning naming the holder once they have waited a while, and then raise
LockTimeoutError naming it: the holder writes its pid into the lock file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("compressc.cache")
DEFAULT_TIMEOUT = 600.0  # seconds: a cold compile of the slowest kernel takes ~20 s
_POLL = 0.05
_WARN_AFTER = 5.0


class LockTimeoutError(TimeoutError):
    """A lock stayed held past the timeout; the message names the holder's pid and the fix."""


def holder(path: Path) -> int | None:
    """The pid the lock's current holder wrote into `path`, None if unknown."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def try_lock(path: Path) -> int | None:
    """An fd holding the lock on `path` if it is free now, else None (never waits)."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _claim(fd)
    return fd


def acquire(path: Path, timeout: float = DEFAULT_TIMEOUT) -> int:
    """An fd holding the lock on `path`, waiting up to `timeout` s; LockTimeoutError after."""
    started, warned = time.monotonic(), False
    while True:
        fd = try_lock(path)
        if fd is not None:
            return fd
        waited = time.monotonic() - started
        if waited >= timeout:
            raise LockTimeoutError(_timeout_message(path, waited))
        if not warned and waited >= min(_WARN_AFTER, timeout / 2):
            log.warning("waiting for %s, held by %s", path, _describe(holder(path)))
            warned = True
        time.sleep(_POLL)


def release(fd: int) -> None:
    """Release a lock from try_lock/acquire (the pid is cleared first: it names the holder)."""
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextmanager
def file_lock(path: Path, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` body."""
    fd = acquire(path, timeout)
    try:
        yield
    finally:
        release(fd)


def _open(path: Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _claim(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _describe(pid: int | None) -> str:
    if pid is None:
        return "a process that did not record its pid"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} (no longer running)"
    except PermissionError:
        pass
    return f"pid {pid}"


def _timeout_message(path: Path, waited: float) -> str:
    who = _describe(holder(path))
    return (
        f"gave up after {waited:.0f} s waiting for {path}, held by {who}: if that process is stopped "
        "or hung, resume it (kill -CONT) or end it; raise the wait with COMPRESSC_LOCK_TIMEOUT=SECONDS"
    )
