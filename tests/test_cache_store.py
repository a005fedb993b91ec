"""The content-addressed store: atomic publish, misses for bad entries, one build per key."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from compressc.cache.integrity import seal
from compressc.cache.store import CorruptEntryError, Entry, ReadOnlyStoreError, Store, StoreError

KEY_A, KEY_B, KEY_C = "a1" * 32, "b2" * 32, "c3" * 32


def manifest(key: str, cubin: bytes, variant: str = "c4a_h512_q64_r64_bf16", arch: str = "sm_90a") -> dict:
    return seal({
        "format": 1,
        "key": key,
        "compressc_version": "0.1.0",
        "kernel": "c4a",
        "variant": variant,
        "arch": arch,
        "entry": f"cutlass_{variant}",
        "params": [
            {"name": "state_cache", "kind": "ptr", "dtype": "f32", "align": 16},
            {"name": "num_rows", "kind": "i32", "dtype": "", "align": 0},
        ],
        "block": [64, 1, 1],
        "grid": "rows",
        "smem_dynamic": 0,
        "smem_static": 8,
        "registers": 157,
        "spill_stores": 0,
        "spill_loads": 0,
        "stack": 0,
        "barriers": 1,
        "cubin": "kernel.cubin",
        "cubin_sha256": hashlib.sha256(cubin).hexdigest(),
        "toolchain": {"flavor": "cu13"},
        "pipeline": "default",
        "compile_seconds": 0.5,
    })


def files(cubin: bytes) -> dict[str, bytes | str]:
    return {
        "kernel.cubin": cubin,
        "spec.cir": "module @c4a\n",
        "kernel_py.txt": "ENTRY = 'x'\n",
        "kernel.ptx": ".version 9.4\n",
        "jitlink.log": "ptxas info\n",
    }


def publish(store: Store, key: str, cubin: bytes = b"cubin", **kw: str) -> Entry:
    return store.publish(key, manifest(key, cubin, **kw), files(cubin))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cache")


def test_publish_then_get(store: Store) -> None:
    entry = publish(store, KEY_A)
    assert entry.path == store.root / KEY_A[:2] / KEY_A
    assert sorted(p.name for p in entry.path.iterdir()) == [
        "jitlink.log",
        "kernel.cubin",
        "kernel.ptx",
        "kernel_py.txt",
        "manifest.json",
        "spec.cir",
    ]
    got = store.get(KEY_A)
    assert got is not None and got.manifest == entry.manifest and got.key == KEY_A
    assert got.cubin_bytes() == b"cubin"
    assert got.text("spec.cir") == "module @c4a\n" and got.text("lowered.cir") is None
    assert store.stats["hits"] == 1 and store.stats["publishes"] == 1
    assert not any((store.root / "tmp").iterdir())


def test_missing_key_is_a_miss(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="compressc.cache")
    assert store.get(KEY_A) is None
    assert store.stats["misses"] == 1 and store.stats["missing"] == 1
    assert f"cache miss {KEY_A}: missing" in caplog.text


def _break(entry: Entry, how: str) -> None:
    if how == "bad json":
        (entry.path / "manifest.json").write_text("{not json")
    elif how == "no manifest":
        (entry.path / "manifest.json").unlink()
    elif how == "no cubin":
        (entry.path / "kernel.cubin").unlink()
    elif how == "invalid manifest":
        m = dict(entry.manifest, block=[0, 1, 1])
        (entry.path / "manifest.json").write_text(json.dumps(m))
    elif how == "wrong key":
        (entry.path / "manifest.json").write_text(json.dumps(dict(entry.manifest, key=KEY_B)))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("bad json", "manifest.json is unreadable"),
        ("no manifest", "manifest.json is missing (half-written entry)"),
        ("no cubin", "kernel.cubin is unreadable"),
        ("invalid manifest", "invalid manifest: block is [0, 1, 1], expected three positive ints"),
        ("wrong key", f"manifest key {KEY_B} does not match the entry directory"),
    ],
)
def test_corrupt_entry_is_a_miss(
    store: Store, caplog: pytest.LogCaptureFixture, how: str, message: str
) -> None:
    _break(publish(store, KEY_A), how)
    assert store.get(KEY_A) is None
    assert store.stats["corrupt"] == 1
    assert f"cache miss {KEY_A}: corrupt:" in caplog.text and message in caplog.text


def test_tampered_cubin_is_a_miss(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    entry = publish(store, KEY_A)
    (entry.path / "kernel.cubin").write_bytes(b"evil!")
    assert store.get(KEY_A) is None
    assert store.stats["tampered"] == 1
    assert "tampered:" in caplog.text and "the manifest says" in caplog.text


def test_cubin_bytes_rechecks_on_every_load(store: Store) -> None:
    entry = publish(store, KEY_A)
    (entry.path / "kernel.cubin").write_bytes(b"evil!")
    with pytest.raises(CorruptEntryError) as err:
        entry.cubin_bytes()
    assert str(entry.path / "kernel.cubin") in str(err.value)
    assert "was modified after it was cached; run `compressc cache verify`" in str(err.value)
    (entry.path / "kernel.cubin").unlink()
    with pytest.raises(CorruptEntryError, match="cannot read .*kernel.cubin: No such file"):
        entry.cubin_bytes()


def test_republish_replaces_a_corrupt_entry_and_keeps_a_valid_one(store: Store) -> None:
    entry = publish(store, KEY_A)
    _break(entry, "no manifest")
    publish(store, KEY_A)
    assert store.get(KEY_A) is not None
    inode = (entry.path / "manifest.json").stat().st_ino
    publish(store, KEY_A)  # loses the race to an identical entry: the first one stays
    assert (entry.path / "manifest.json").stat().st_ino == inode
    assert not any((store.root / "tmp").iterdir())


def test_index_finds_the_newest_build(store: Store) -> None:
    assert store.find("c4a_h512_q64_r64_bf16", "sm90") is None
    publish(store, KEY_A, b"old")
    publish(store, KEY_B, b"new")
    publish(store, KEY_C, b"other", arch="sm_100a")
    assert json.loads(store.index_path("c4a_h512_q64_r64_bf16", "sm_90a").read_text()) == {"key": KEY_B}
    assert store.find("c4a_h512_q64_r64_bf16", "sm90").cubin_bytes() == b"new"
    assert store.find("c4a_h512_q64_r64_bf16", "sm_100a").key == KEY_C
    store.index_path("c4a_h512_q64_r64_bf16", "sm_90a").write_text("[]")
    assert store.find("c4a_h512_q64_r64_bf16", "sm_90a") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"manifest": {"grid": ""}}, "grid is '', expected a non-empty string"),
        ({"manifest": {"key": KEY_B}}, f"manifest key {KEY_B} differs from the key it is published under"),
        ({"files": {"../x": "y"}}, "file name '../x' is not allowed"),
        ({"files": {"manifest.json": "{}"}}, "file name 'manifest.json' is not allowed"),
        ({"files": {"kernel.cubin": b"other"}}, "kernel.cubin does not have the manifest's cubin_sha256"),
        ({"files": {"kernel.cubin": "text"}}, "files has no 'kernel.cubin' bytes"),
    ],
)
def test_publish_refuses_inconsistent_entries(store: Store, change: dict, message: str) -> None:
    m = {**manifest(KEY_A, b"cubin"), **change.get("manifest", {})}
    f = {**files(b"cubin"), **change.get("files", {})}
    with pytest.raises(StoreError) as err:
        store.publish(KEY_A, m, f)
    assert str(err.value).startswith(f"refusing to publish {KEY_A}: ") and message in str(err.value)
    assert not (store.root / KEY_A[:2]).exists()


def test_a_malformed_key_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match=r"'\.\./etc' is not a cache key \(64 lowercase hex digits\)"):
        store.get("../etc")


def test_read_only_store_loads_and_refuses_writes(tmp_path: Path) -> None:
    publish(Store(tmp_path), KEY_A)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    ro = Store(tmp_path, readonly=True)
    assert ro.get(KEY_A).cubin_bytes() == b"cubin"
    assert ro.find("c4a_h512_q64_r64_bf16", "sm_90a").key == KEY_A
    assert ro.get(KEY_B) is None and len(ro.entries()) == 1 and ro.verify() == []
    for write in (lambda: publish(ro, KEY_B), lambda: ro.get_or_build(KEY_B, lambda: None), ro.clear):
        with pytest.raises(ReadOnlyStoreError, match=f"the kernel store at {tmp_path} is read-only"):
            write()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_entries_verify_prune_clear(store: Store) -> None:
    for age, key in enumerate((KEY_A, KEY_B, KEY_C)):
        entry = publish(store, key, bytes(100))
        os.utime(entry.path / "manifest.json", (1000 + age, 1000 + age))
    assert [e.key for e in store.entries()] == [KEY_A, KEY_B, KEY_C]
    (store.root / "tmp" / "stale").mkdir()
    (store.entry_path(KEY_B) / "kernel.cubin").write_bytes(b"x")
    problems = dict((p.name, msg) for p, msg in store.verify())
    assert problems[KEY_B].startswith("tampered:")
    assert problems["stale"] == "leftover temporary directory of an interrupted publish"
    size = sum(f.stat().st_size for f in store.entry_path(KEY_C).rglob("*"))
    assert store.prune(size) == [KEY_A, KEY_B]
    assert [e.key for e in store.entries()] == [KEY_C] and store.find(
        "c4a_h512_q64_r64_bf16", "sm_90a"
    ).key == KEY_C
    store.clear()
    assert store.entries() == [] and store.verify() == [] and not (store.root / "index").exists()


def test_verify_reports_a_dangling_index(store: Store) -> None:
    publish(store, KEY_A)
    store.index_path("c4a_h512_q64_r64_bf16", "sm_90a").write_text(json.dumps({"key": KEY_B}))
    assert [(p.name, m) for p, m in store.verify()] == [
        ("c4a_h512_q64_r64_bf16@sm_90a.json", f"index names {KEY_B}, which is not a valid entry")
    ]


def test_get_or_build_builds_once_and_accepts_a_published_entry(store: Store) -> None:
    calls = []

    def build() -> tuple[dict, dict]:
        calls.append(1)
        return manifest(KEY_A, b"built"), files(b"built")

    assert store.get_or_build(KEY_A, build).cubin_bytes() == b"built"
    assert store.get_or_build(KEY_A, build).cubin_bytes() == b"built"
    assert calls == [1] and store.stats["builds"] == 1
    entry = store.get_or_build(KEY_B, lambda: publish(store, KEY_B, b"self"))
    assert entry.cubin_bytes() == b"self"


def _build_in_child(root: str, log: str, barrier: Any, results: Any) -> None:
    """One of N processes asking for the same missing key at the same moment (spawned)."""

    def build() -> tuple[dict, dict]:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        return manifest(KEY_A, b"the one build"), files(b"the one build")

    store = Store(Path(root))
    barrier.wait()
    results.put(store.get_or_build(KEY_A, build).cubin_bytes())


def test_eight_processes_build_a_key_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results, log = ctx.Barrier(8), ctx.Queue(), tmp_path / "builds.log"
    args = (str(tmp_path / "cache"), str(log), barrier, results)
    children = [ctx.Process(target=_build_in_child, args=args) for _ in range(8)]
    for child in children:
        child.start()
    got = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0] * 8
    assert len(log.read_text().splitlines()) == 1
    assert got == [b"the one build"] * 8
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert Store(tmp_path / "cache").verify() == []
