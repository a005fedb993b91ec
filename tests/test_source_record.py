"""The served fingerprint's stat record (compressc.driver.key.recorded_source_fingerprint): reused
only while every compiler source keeps its path, size and mtime, never when it may be stale."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from compressc.driver import key
from compressc.driver.key import (
    compiler_sources,
    recorded_source_fingerprint,
    source_fingerprint,
    source_stats,
)

OLD_NS = 1_600_000_000 * 10**9  # sources last edited long before any record is written


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for rel in ("ir/core.py", "ir/sub/deep.py", "passes/vectorize.py", "kernels/emitter.py",
                "specs/family.py", "driver/compile.py", "ir/notes.txt", "cache/store.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
        os.utime(root / rel, ns=(OLD_NS, OLD_NS))
    return root


@pytest.fixture
def hashed(monkeypatch):
    """Counts the hashes of the sources."""
    calls = []
    real = key.source_fingerprint
    monkeypatch.setattr(key, "source_fingerprint", lambda root=None: calls.append(root) or real(root))
    return calls


def test_the_stats_list_the_files_the_fingerprint_hashes(tmp_path):
    for root in (_tree(tmp_path), Path(key.__file__).resolve().parents[1]):
        listed = [p.relative_to(root).as_posix() for p in compiler_sources(root)]
        assert [s[0] for s in source_stats(root)] == listed


def test_an_unchanged_tree_is_hashed_once(tmp_path, hashed):
    root, records = _tree(tmp_path), tmp_path / "cache"
    first = recorded_source_fingerprint(records, root)
    assert first == recorded_source_fingerprint(records, root) == source_fingerprint(root)
    assert len(hashed) == 1


@pytest.mark.parametrize("change", ["edit", "same_size_edit", "add", "remove", "rename"])
def test_any_change_to_a_source_is_hashed_again(tmp_path, hashed, change):
    root, records = _tree(tmp_path), tmp_path / "cache"
    before = recorded_source_fingerprint(records, root)
    target = root / "ir/sub/deep.py"
    if change == "edit":
        target.write_text("B = 3\n")
    elif change == "same_size_edit":  # same size, the mtime of the edit
        target.write_text(target.read_text().upper())
    elif change == "add":
        (root / "passes/new.py").write_text("")
    elif change == "remove":
        target.unlink()
    else:
        target.rename(root / "ir/sub/other.py")
    after = recorded_source_fingerprint(records, root)
    assert len(hashed) == 2 and after == source_fingerprint(root) != before


def test_a_record_written_in_the_same_tick_as_an_edit_is_not_trusted(tmp_path, hashed):
    """git's racily-clean rule: an edit just after the hashing may keep size and mtime."""
    root, records = _tree(tmp_path), tmp_path / "cache"
    now = (root / "ir/core.py").stat().st_mtime_ns
    os.utime(root / "ir/core.py", ns=(now, 2**62))  # modified "after" the record is written
    recorded_source_fingerprint(records, root)
    recorded_source_fingerprint(records, root)
    assert len(hashed) == 2


def test_records_of_other_trees_and_forged_records_are_not_used(tmp_path, hashed):
    root, records = _tree(tmp_path), tmp_path / "cache"
    recorded_source_fingerprint(records, root)
    (path,) = (records / "fingerprints").iterdir()
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, root="/elsewhere", fingerprint="0" * 64)))
    assert recorded_source_fingerprint(records, root) == source_fingerprint(root)
    path.write_text("not json")
    assert recorded_source_fingerprint(records, root) == source_fingerprint(root)
    assert len(hashed) == 3


def test_an_unwritable_record_directory_only_costs_the_hash(tmp_path, hashed):
    root = _tree(tmp_path)
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the record directory would be
    assert recorded_source_fingerprint(blocked, root) == recorded_source_fingerprint(None, root)
    assert recorded_source_fingerprint(blocked, root) == source_fingerprint(root) and len(hashed) == 3
