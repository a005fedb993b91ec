"""`compressc build` across processes (issue 17, item 3): one compile per key for N
processes, and no compile worker outlives a parent killed with SIGKILL."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compressc.cache.store import Store

ROOT = Path(__file__).resolve().parents[1]
needs_build = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
N = 8
ONE = ["--arch", "sm90", "--spec", "c128a_store", "--head-size", "512", "--quant-block", "64",
       "--weight-dtype", "bf16", "-j", "1"]


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


@needs_build
def test_n_processes_building_one_variant_compile_it_once(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "compressc.cli", "build", *ONE, "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=ROOT) for _ in range(N)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * N, [err for _, err in outputs]
    row = re.compile(r"│ c128a_store_h512_q64_r64_bf16 .*│ (\w+) +│")
    statuses = [row.search(stdout).group(1) for stdout, _ in outputs]
    assert sorted(statuses) == ["built"] + ["cached"] * (N - 1)
    store = Store(out)
    assert len(store.entries()) == 1 and store.verify() == []


# An emitted module that says it runs, then never finishes importing (a hung compile).
_HANG = "import os, sys, time\nopen(os.environ['MARKS'] + f'/{os.getpid()}', 'w').close()\ntime.sleep(120)\n"

_PARENT = f"""
from compressc.driver.compile import compile_many
compile_many([(1, {_HANG!r}, "sm_90a"), (2, {_HANG!r}, "sm_90a")], 2)
"""


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(c) for c in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_build
def test_compile_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PARENT)], env=_env(MARKS=str(tmp_path)),
                              cwd=ROOT)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline:  # both workers inside their job
        workers = {int(p.name) for p in tmp_path.iterdir()}
        time.sleep(0.1)
    assert len(workers) == 2 and workers <= _children(parent.pid), "the pool did not start its jobs"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    assert survivors == [], "compile workers outlived their SIGKILLed parent"


_HOLD = """
import sys, time
from pathlib import Path
from compressc.cache.lock import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


@needs_build
def test_a_stopped_lock_holder_fails_the_build_naming_its_pid(tmp_path: Path) -> None:
    from compressc.driver.plan import plan_many
    from compressc.specs import make_spec

    out = tmp_path / "cache"
    (p,) = plan_many([make_spec("c128a_store", weight_dtype="bf16")], ["sm_90a"])
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(Store(out).lock_path(p.key))],
                              stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert holder.stdout.readline() == "held\n"
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        cmd = [sys.executable, "-m", "compressc.cli", "build", *ONE, "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(COMPRESSC_LOCK_TIMEOUT="1"),
                              cwd=ROOT, timeout=120)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    text = " ".join(done.stderr.split())  # the failure goes to stderr; rich wraps long lines
    assert f"waiting for {out}/locks/{p.key}.lock, held by pid {holder.pid}" in done.stderr
    assert f"gave up after 1 s waiting for {out}/locks/{p.key}.lock, held by pid {holder.pid}" in text
    assert Store(out).entries() == []
