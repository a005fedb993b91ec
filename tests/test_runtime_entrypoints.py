"""The runtime's entry-point scan gives importlib.metadata's answer, and pack roots are rediscovered
when sys.path changes (compressc/runtime/entrypoints.py, resolve.installed_pack_roots)."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

from compressc.runtime import entrypoints, resolve

GROUP = "compressc.kernel_packs"


def _dist(site: Path, dirname: str, text: str | None) -> None:
    info = site / dirname
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dirname.split('-')[0]}\nVersion: 1\n")
    if text is not None:
        (info / "entry_points.txt").write_text(text)


def _same(group: str) -> list[tuple[str, str, str]]:
    ours = [(e.name, e.value, e.group) for e in entrypoints.entry_points(group=group)]
    theirs = [(e.name, e.value, e.group) for e in metadata.entry_points(group=group)]
    assert ours == theirs
    return ours


@pytest.mark.parametrize("group", [GROUP, "console_scripts", "pytest11", "no.such.group"])
def test_the_installed_packages_give_importlib_metadatas_answer(group):
    _same(group)


def test_packs_duplicates_and_comments_as_importlib_reads_them(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(first, "compressc_kernels_sm90-0.1.0.dist-info",
          f"# a comment\n[{GROUP}]\nsm90 = compressc_kernels_sm90:ROOT\n\n[console_scripts]\nx = y:z\n")
    _dist(second, "Compressc.Kernels_SM90-0.0.9.dist-info", f"[{GROUP}]\nsm90 = old:ROOT\n")  # shadowed
    _dist(second, "other_pack-2.dist-info", f"[{GROUP}]\n  extra =  other_pack : ROOT  \n")
    _dist(second, "no_entry_points-1.dist-info", None)
    (second / "legacy-1.egg-info").write_text("Name: legacy\n")  # an .egg-info file, not a directory
    monkeypatch.setattr(sys, "path", [str(first), str(second), str(tmp_path / "missing")])
    assert sorted(_same(GROUP)) == [("extra", "other_pack : ROOT", GROUP),
                                    ("sm90", "compressc_kernels_sm90:ROOT", GROUP)]


@pytest.mark.parametrize("case", ["zip", "egg", "suffix", "finder", "no_equals"])
def test_where_the_scan_could_differ_importlib_metadata_answers(tmp_path, monkeypatch, case):
    site = tmp_path / "site"
    line = "broken" if case == "no_equals" else "p = pack:ROOT"
    _dist(site, "pack-1.dist-info", f"[{GROUP}]\n{line}\n")
    path = [str(site)]
    if case == "zip":
        (tmp_path / "lib.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip archive
        path.append(str(tmp_path / "lib.zip"))
    elif case == "egg":
        (tmp_path / "x.egg").mkdir()
        path.append(str(tmp_path / "x.egg"))
    elif case == "suffix":
        _dist(site, "upper-1.DIST-INFO", None)
    elif case == "finder":
        monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, type("F", (), {"find_distributions": None})()])
    monkeypatch.setattr(sys, "path", path)
    asked = []
    monkeypatch.setattr(entrypoints.metadata, "entry_points", lambda group: asked.append(group) or ["theirs"])
    assert entrypoints.entry_points(group=GROUP) == ["theirs"] and asked == [GROUP]


def test_pack_roots_are_found_again_when_a_path_changes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(resolve, "iter_pack_roots", lambda: calls.append(1) or [tmp_path])
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert resolve.installed_pack_roots() == resolve.installed_pack_roots() == [tmp_path]
    assert len(calls) == 1
    (tmp_path / "new_pack-1.dist-info").mkdir()  # an install: the directory's mtime changes
    os.utime(tmp_path, ns=(0, 10**18))
    resolve.installed_pack_roots()
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "more")])
    resolve.installed_pack_roots()
    assert len(calls) == 3
