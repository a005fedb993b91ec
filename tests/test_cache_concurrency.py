"""Eight processes ask the runtime for the same missing kernel at the same moment (issue 5).

A real kernel is compiled: exactly one process compiles it (the store's flock), all eight
load identical bytes, and the cache is left with one complete entry and nothing half-written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from compressc.cache.store import Store

pytestmark = pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
N = 8


def _ask(root: str, log: str, barrier: Any, results: Any) -> None:
    """One process: count its own compiles, then resolve the kernel through the runtime (spawned)."""
    from compressc.driver import compile as compile_module
    from compressc.runtime.resolve import find_kernel
    from compressc.specs import make_spec

    real = compile_module.compile_source

    def counted(source: str, arch: str):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(source, arch)

    compile_module.compile_source = counted
    spec = make_spec("c128a_store", weight_dtype="bf16")
    barrier.wait()
    image = find_kernel(spec, "sm_90a", pack_roots=[], cache_dir=Path(root), allow_jit=True)
    results.put((os.getpid(), image.key, image.cubin))


def test_eight_processes_compile_a_missing_kernel_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    root, log = tmp_path / "cache", tmp_path / "compiles.log"
    barrier, results = ctx.Barrier(N), ctx.Queue()
    children = [ctx.Process(target=_ask, args=(str(root), str(log), barrier, results)) for _ in range(N)]
    for child in children:
        child.start()
    got = [results.get(timeout=240) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0] * N
    assert len(log.read_text().splitlines()) == 1, "more than one process compiled the kernel"
    assert len({pid for pid, _, _ in got}) == N
    assert len({key for _, key, _ in got}) == 1
    assert len({hashlib.sha256(cubin).hexdigest() for _, _, cubin in got}) == 1
    store = Store(root)
    (entry,) = store.entries()
    assert entry.cubin_bytes() == got[0][2]
    assert store.verify() == [] and list((root / "tmp").iterdir()) == []
