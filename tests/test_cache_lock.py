"""The per-key build lock: a stuck holder is named and waited for with a timeout (issue 17)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compressc.cache import lock
from compressc.cache.lock import LockTimeoutError, file_lock, holder, try_lock

_HOLD = """
import sys, time
from pathlib import Path
from compressc.cache.lock import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder_process(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_stopped_holder_times_out_naming_its_pid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "locks" / "k.lock"
    proc = _holder_process(path)
    os.kill(proc.pid, signal.SIGSTOP)  # alive but stuck: the kernel keeps its flock
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "compressc.cache"), pytest.raises(LockTimeoutError) as err:
            with file_lock(path, timeout=1.0):
                pass
        assert time.monotonic() - started < 5
        assert str(err.value) == (
            f"gave up after 1 s waiting for {path}, held by pid {proc.pid}: if that process is stopped "
            "or hung, resume it (kill -CONT) or end it; raise the wait with COMPRESSC_LOCK_TIMEOUT=SECONDS"
        )
        assert f"waiting for {path}, held by pid {proc.pid}" in caplog.text
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_killed_holder_frees_the_lock_and_the_pid_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    proc = _holder_process(path)
    assert holder(path) == proc.pid and try_lock(path) is None
    proc.kill()
    proc.wait()
    fd = try_lock(path)
    assert fd is not None and holder(path) == os.getpid()
    lock.release(fd)
    assert holder(path) is None


def test_a_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    proc = _holder_process(path)
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)  # a stopped process still dies of SIGKILL
    with file_lock(path, timeout=10):
        assert holder(path) == os.getpid()
    proc.wait()
