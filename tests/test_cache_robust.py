"""The store under a full disk, a read-only mount, interrupted publishes and two
concurrent `cache clear`/`prune` (issue 17, items 2, 6, 7). Runs as root, as CI does:
tmpfs and read-only bind mounts live in a private mount namespace (`unshare -m`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cache_store import KEY_A, KEY_B, files, manifest, publish

from compressc.cache.store import Store

ROOT = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="mounts need root and unshare (CI has both)"
)


def _in_namespace(setup: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `setup` (mount commands) and then `script` (Python) in a private mount namespace."""
    shell = f"{setup} && exec {sys.executable} -c {_quote(script)}"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    return subprocess.run(["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@needs_root
def test_enospc_names_the_path_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "full"
    root.mkdir()
    script = textwrap.dedent(f"""
        from pathlib import Path
        from test_cache_store import KEY_A, KEY_B, publish
        from compressc.cache.store import Store, StoreError
        store = Store(Path({str(root)!r}))
        try:
            publish(store, KEY_A, bytes(2 << 20))  # 2 MiB into a 1 MiB tmpfs
        except StoreError as err:
            print("ERROR", err)
        print("LEFT", sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*")))
        publish(store, KEY_B, b"small")  # the space was given back
        print("AFTER", [e.key == KEY_B for e in store.entries()], store.verify())
    """)
    proc = _in_namespace(f"mount -t tmpfs -o size=1m tmpfs {root}", script)
    assert proc.returncode == 0, proc.stderr
    error = next(line for line in proc.stdout.splitlines() if line.startswith("ERROR"))
    assert error.startswith(f"ERROR cannot write {root}/tmp/entry.")
    assert error.endswith(
        "/kernel.cubin: No space left on device; nothing was published "
        "(free space on that file system, or point COMPRESSC_CACHE_DIR elsewhere)"
    )
    assert "LEFT ['tmp']" in proc.stdout
    assert "AFTER [True] []" in proc.stdout


@needs_root
def test_a_read_only_mount_is_a_read_only_store(tmp_path: Path) -> None:
    """Root ignores permission bits, not a read-only mount: this runs where CI runs."""
    pack = tmp_path / "pack"
    publish(Store(pack), KEY_A)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from test_cache_store import KEY_A, KEY_B, publish
        from compressc.cache.store import ReadOnlyStoreError, Store
        store = Store(Path({str(pack)!r}))
        print("READONLY", store.readonly, store.get(KEY_A).cubin_bytes())
        try:
            publish(store, KEY_B)
        except ReadOnlyStoreError as err:
            print("REFUSED", err)
    """)
    proc = _in_namespace(f"mount --bind -o ro {pack} {pack}", script)
    assert proc.returncode == 0, proc.stderr
    assert "READONLY True b'cubin'" in proc.stdout
    assert f"REFUSED the kernel store at {pack} is read-only" in proc.stdout
    assert [e.key for e in Store(pack).entries()] == [KEY_A]


def test_a_root_without_write_permission_is_read_only(tmp_path: Path) -> None:
    """Root ignores permission bits only through CAP_DAC_OVERRIDE: drop it (setpriv) and
    root is refused like any user, so this runs where CI runs."""
    pack = tmp_path / "pack"
    publish(Store(pack), KEY_A)
    for path in [pack, *pack.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from test_cache_store import KEY_A
        from compressc.cache.store import Store
        store = Store(Path({str(pack)!r}))
        print("READONLY", store.readonly, store.get(KEY_A).cubin_bytes())
    """)
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    try:
        proc = subprocess.run([*drop, sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
    finally:
        for path in [pack, *pack.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr
    assert "READONLY True b'cubin'" in proc.stdout


def test_a_killed_publish_is_stale_and_prune_removes_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    publish(store, KEY_A)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = store.root / "tmp" / f"entry.{child.pid}.{KEY_B}.0badc0de"
    live.mkdir()
    dead = store.root / "tmp" / f"entry.{_dead_pid()}.{KEY_B}.deadbeef"
    dead.mkdir()
    (dead / "kernel.cubin").write_bytes(b"half")
    try:
        assert store.verify() == [(dead, "leftover temporary directory of an interrupted publish")]
        assert store.prune(10**9) == [] and sorted((store.root / "tmp").iterdir()) == [live]
        assert store.verify() == []
    finally:
        child.kill()
        child.wait()
    assert store.verify() == [(live, "leftover temporary directory of an interrupted publish")]
    store.clear()
    assert list((store.root / "tmp").iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


ENTRIES, RUNS = 300, 3


def _fill(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # 1800 fsyncs are not what is tested
    store = Store(root)
    for i in range(ENTRIES):
        key = f"{i:064x}"
        cubin = f"cubin {i}".encode()
        store.publish(key, manifest(key, cubin, variant=f"c4a_v{i}"), files(cubin))
    monkeypatch.undo()


def test_two_concurrent_clears_and_prunes_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outcomes = []
    for run in range(RUNS):
        root = tmp_path / f"cache{run}"
        _fill(root, monkeypatch)
        commands = [["cache", "clear", "--yes"], ["cache", "prune", "--max-size", "0"]]
        procs = [
            subprocess.Popen([sys.executable, "-m", "compressc.cli", *c, "--cache-dir", str(root)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            for c in (commands if run % 2 else commands[::-1]) + [commands[run % 2]]
        ]
        outcomes += [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert Store(root).entries() == [] and Store(root).verify() == []
    assert [(rc, "Traceback" in err) for rc, err in outcomes] == [(0, False)] * (3 * RUNS), outcomes


def test_an_entry_without_its_index_is_found_and_repaired(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    entry = store.publish(KEY_A, manifest(KEY_A, b"c"), files(b"c"), index=False)  # killed before the index
    assert store.find("c4a_h512_q64_r64_bf16", "sm_90a") is None
    assert store.point_index(entry) is True and store.point_index(entry) is False
    assert store.find("c4a_h512_q64_r64_bf16", "sm_90a").key == KEY_A


@pytest.mark.parametrize(
    "edit", [{"block": [128, 1, 1]}, {"grid": "wave:8"}, {"smem_dynamic": 4096}, {"programmatic": True},
             {"entry": "other"}, {"toolchain": {"flavor": "cu12"}}, {"compressc_version": "9.9"}],
    ids=lambda e: next(iter(e)),
)
def test_an_edited_launch_field_is_a_tampered_miss(tmp_path: Path, edit: dict) -> None:
    """Edited consistently (the cubin and its sha untouched), a launch field is still caught."""
    import json

    store = Store(tmp_path / "cache")
    entry = publish(store, KEY_A)
    (entry.path / "manifest.json").write_text(json.dumps(entry.manifest | edit))
    expected = "tampered: the manifest's launch fields (key, kernel, variant, arch, entry, params, block, "
    assert store.problem(KEY_A).startswith(expected) and store.get(KEY_A) is None
    assert [(p.name, m.split(" (")[0]) for p, m in store.verify()] == [
        (KEY_A, "tampered: the manifest's launch fields"),
        ("c4a_h512_q64_r64_bf16@sm_90a.json", f"index names {KEY_A}, which is not a valid entry"),
    ]


def test_an_unsealed_manifest_is_refused_at_publish(tmp_path: Path) -> None:
    from compressc.cache.store import StoreError

    unsealed = manifest(KEY_A, b"c")
    del unsealed["launch_sha256"]
    with pytest.raises(StoreError, match=r"refusing to publish a1a1.*: the manifest has no launch_sha256"):
        Store(tmp_path).publish(KEY_A, unsealed, files(b"c"))


KILLS = 15
_PUBLISHER = """
import sys
from pathlib import Path
from test_cache_store import files, manifest
from compressc.cache.store import Store
store = Store(Path(sys.argv[1]))
print("ready", flush=True)
for i in range(10**6):
    key = f"{int(sys.argv[2]) * 10**6 + i:064x}"
    store.publish(key, manifest(key, bytes(4096), variant=f"c4a_k{key[-8:]}"), files(bytes(4096)))
"""


def test_a_publisher_killed_at_any_moment_leaves_a_repairable_store(tmp_path: Path) -> None:
    """SIGKILL mid-publish (before, during or after the rename, before the index write), 15 times."""
    import random
    import time

    from compressc.cache.repair import repair

    root, rng, survived = tmp_path / "cache", random.Random(17), 0
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(root), str(kill)],
                                 stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.3))
        child.kill()
        child.wait()
        store = Store(root)
        assert all(store.get(e.key) is not None for e in store.entries())  # never half an entry
        repair(store, check_cubins=False)  # the cubins here are not ELF files
        assert store.verify() == [], store.verify()
        assert all(store.find(e.manifest["variant"], "sm_90a") == e for e in store.entries())
        survived += 1
    assert survived == KILLS and len(Store(root).entries()) > 0


def test_a_full_disk_at_the_index_write_names_it_and_repair_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from compressc.cache.repair import repair
    from compressc.cache.store import StoreError

    store = Store(tmp_path / "cache")
    real = os.replace

    def full(src, dst):
        if Path(dst).parent.name == "index":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreError) as err:
        publish(store, KEY_A)
    monkeypatch.undo()
    index = store.index_path("c4a_h512_q64_r64_bf16", "sm_90a")
    assert str(err.value) == (
        f"cannot write {index}: No space left on device; the entry is in place without its index: the next "
        "build or `compressc cache verify --repair` restores it (free space on that file system, or point "
        "COMPRESSC_CACHE_DIR elsewhere)"
    )
    assert store.get(KEY_A) is not None and list((store.root / "tmp").iterdir()) == []
    assert repair(store, check_cubins=False) == [f"index c4a_h512_q64_r64_bf16@sm_90a now names {KEY_A}"]
