"""Kernel packs (docs/architecture.md §4): the pack index, the version rule and tamper-evident lookup.

A kernel pack is an installed package (a wheel written by `compressc wheel`) whose
`ROOT` is a Store-shaped directory plus one more file, the pack index:

  pack.json   {"format": 1, "name": "compressc-kernels-sm90", "compressc_version": "0.1.0",
               "archs": ["sm_90a"],
               "kernels": {"<variant>@<arch>": {"key", "cubin_sha256", "launch_sha256",
                                                "compressc_version"}}}

Version rule: a pack serves only the compressc version that built it (exact equality,
the same pin as the wheel's `Requires-Dist: compressc==X`). The kernel ABI
(specs/abi.py) and the manifest format are not versioned apart from compressc, and cache
keys already hash the exact version, so a looser rule would trust kernels no test
ran against this runtime. A root without pack.json (a hand-made store) is accepted;
every entry is still checked against the runtime's ABI when it is resolved.

A pack is read-only, and unlike a cache entry (a miss that gets rebuilt), a pack entry
whose bytes do not match is reported as tampered (`TamperedPackError`, naming the pack
and the file) so the user learns to reinstall it.

Standard library + compressc.cache.store only: the runtime imports this without cutlass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressc import __version__
from compressc.cache.store import CorruptEntryError, Entry, Store, StoreError

PACK_FILE = "pack.json"
PACK_FORMAT = 1
ENTRY_POINT_GROUP = "compressc.kernel_packs"


class PackError(StoreError):
    """A kernel pack cannot be used (unreadable index, other compressc version)."""


class TamperedPackError(CorruptEntryError):
    """An installed pack's file does not match its manifest or pack index."""


def is_pack(root: Path) -> bool:
    return (Path(root) / PACK_FILE).is_file()


def read_pack_info(root: Path) -> dict[str, Any] | None:
    """The pack index of `root`, None if it has none; PackError if it is unreadable."""
    path = Path(root) / PACK_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise PackError(f"{path} is unreadable: {err}") from None
    if (
        not isinstance(info, dict)
        or info.get("format") != PACK_FORMAT
        or not isinstance(info.get("kernels"), dict)
    ):
        raise PackError(f"{path} is not a format-{PACK_FORMAT} compressc pack index")
    return info


def pack_label(info: dict[str, Any] | None, root: Path) -> str:
    """How messages name a pack: "compressc-kernels-sm90 0.1.0", or its directory."""
    if not info:
        return str(root)
    return f"{info.get('name', root)} {info.get('compressc_version', '?')}"


def check_pack(root: Path, version: str = __version__) -> dict[str, Any] | None:
    """The pack index of `root` if this compressc may use the pack; PackError otherwise."""
    info = read_pack_info(root)
    if info is None or info.get("compressc_version") == version:
        return info
    name = info.get("name", "the pack")
    raise PackError(
        f"{name} was built for compressc {info.get('compressc_version')!r}, this is compressc {version} "
        f"(a pack serves exactly the version that built it): pip install '{name}=={version}', "
        f"or build one with `compressc wheel`"
    )


def reinstall_hint(info: dict[str, Any] | None) -> str:
    if not info:
        return "rebuild or reinstall the pack"
    return f"reinstall it: pip install --force-reinstall '{info['name']}=={info['compressc_version']}'"


class PackStore(Store):
    """A read-only Store over an installed pack: a bad entry raises instead of missing."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, readonly=True)
        self.info = read_pack_info(self.root)
        self.label = pack_label(self.info, self.root)

    def find(self, variant: str, arch: str) -> Entry | None:
        """The pack's entry for (variant, arch), None if it has none; TamperedPackError if bad."""
        path = self.index_path(variant, arch)
        if not path.is_file():
            return None
        try:
            key = json.loads(path.read_text())["key"]
            entry, problem = self._load(key)
        except (OSError, ValueError, KeyError, TypeError, StoreError) as err:
            entry, problem = None, f"unreadable index {path}: {err}"
        problem = problem or self._index_problem(path.stem, entry)
        if problem:
            raise TamperedPackError(f"kernel pack {self.label}: {problem}; {reinstall_hint(self.info)}")
        return entry

    def _index_problem(self, label: str, entry: Entry) -> str | None:
        """The pack index is a second, independent record of each key and cubin sha256."""
        if self.info is None:
            return None
        listed = self.info["kernels"].get(label)
        if not isinstance(listed, dict):
            return f"{label} is not listed in {self.root / PACK_FILE}"
        if (listed.get("key"), listed.get("cubin_sha256")) != (entry.key, entry.manifest["cubin_sha256"]):
            return f"{entry.path / entry.manifest['cubin']} does not match {self.root / PACK_FILE}"
        # packs written before launch fields were sealed list none; a resealed manifest differs
        if "launch_sha256" in listed and listed["launch_sha256"] != entry.manifest.get("launch_sha256"):
            return f"the launch fields of {entry.path / 'manifest.json'} do not match {self.root / PACK_FILE}"
        return None


def make_pack_info(name: str, archs: list[str], entries: list[Entry], version: str = __version__) -> dict:
    """The pack index of a pack holding `entries` (one per variant@arch)."""
    kernels = {
        f"{e.manifest['variant']}@{e.manifest['arch']}": {
            "key": e.key,
            "cubin_sha256": e.manifest["cubin_sha256"],
            "launch_sha256": e.manifest["launch_sha256"],
            "compressc_version": e.manifest["compressc_version"],
        }
        for e in entries
    }
    return {
        "format": PACK_FORMAT,
        "name": name,
        "compressc_version": version,
        "archs": list(archs),
        "kernels": dict(sorted(kernels.items())),
    }
