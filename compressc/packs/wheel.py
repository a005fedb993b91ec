"""Kernel-pack wheels (docs/architecture.md §4), written directly with zipfile, byte for byte reproducible.

`compressc_kernels_sm90-0.1.0-py3-none-any.whl` (py3-none-any: cubins are GPU code, so one
wheel serves x86-64 and aarch64 hosts) holds:

  compressc_kernels_sm90/__init__.py        ROOT = <the store directory below>, NAME, ARCHS
  compressc_kernels_sm90/store/pack.json    the pack index (compressc.packs.installed)
  compressc_kernels_sm90/store/index/<variant>@<arch>.json
  compressc_kernels_sm90/store/<key[:2]>/<key>/manifest.json, kernel.cubin, stage texts
                                            (all but kernel.ptx: see UNPACKED_STAGES)
  compressc_kernels_sm90-0.1.0.dist-info/   METADATA (Requires-Dist: compressc==0.1.0), WHEEL,
                                            entry_points.txt ([compressc.kernel_packs]
                                            sm90 = compressc_kernels_sm90:ROOT), RECORD

Reproducible: members sorted (RECORD last), one fixed timestamp (1980-01-01, or the
caller's SOURCE_DATE_EPOCH), mode 0644, fixed compression; each manifest's
`compile_seconds` (wall time, the one field that differs between two identical builds)
is zeroed, so the same build inputs give the same wheel bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compressc import __version__
from compressc.cache.arch import normalize_arch, sm_number
from compressc.cache.store import KERNEL_SOURCE, LEGACY_KERNEL_SOURCE, MANIFEST, Entry
from compressc.packs.installed import ENTRY_POINT_GROUP, PACK_FILE, make_pack_info
from compressc.packs.wanted import WANTED_FILE, spec_of, wanted_file

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can record
_FILE_MODE = 0o100644 << 16  # regular file, rw-r--r--
_STORE_DIR = "store"
# Stage files a pack leaves out. kernel.ptx is the largest (about half of an sm_100a pack) and
# serves no loader: PTX for an arch-specific target (sm_90a, sm_100a) runs on that arch only,
# where the cubin already does, and `compressc build` of the variant writes it into a cache.
UNPACKED_STAGES = frozenset({"kernel.ptx"})


class WheelError(RuntimeError):
    """A wheel could not be written; the message says why and nothing was left behind."""


@dataclass(frozen=True, slots=True)
class PackName:
    tag: str  # "sm90" or "sm90-sm100": the entry point name
    dist: str  # "compressc-kernels-sm90"
    package: str  # "compressc_kernels_sm90"


@dataclass(frozen=True, slots=True)
class WheelInfo:
    path: Path
    size: int
    name: PackName
    kernels: int


def arch_tag(arch: str) -> str:
    """An arch in a pack name: sm_90a -> sm90 (what `--arch sm90` means), sm_100f -> sm100f."""
    arch = normalize_arch(arch)
    short = f"sm{sm_number(arch)}"
    return short if normalize_arch(short) == arch else arch.replace("_", "")


def pack_name(archs: Sequence[str]) -> PackName:
    tag = "-".join(arch_tag(a) for a in sorted_archs(archs))
    return PackName(tag, f"compressc-kernels-{tag}", f"compressc_kernels_{tag.replace('-', '_')}")


def sorted_archs(archs: Sequence[str]) -> list[str]:
    names = {normalize_arch(a) for a in archs}
    return sorted(names, key=lambda a: (sm_number(a), a))


def wheel_filename(name: PackName, version: str = __version__) -> str:
    return f"{name.package}-{version}-py3-none-any.whl"


def zip_time(source_date_epoch: str | None) -> tuple[int, int, int, int, int, int]:
    """The member timestamp: SOURCE_DATE_EPOCH (seconds, UTC) if given, never before 1980."""
    if not source_date_epoch:
        return ZIP_EPOCH
    try:
        stamp = time.gmtime(int(source_date_epoch))[:6]
    except (ValueError, OverflowError):
        raise WheelError(f"SOURCE_DATE_EPOCH={source_date_epoch!r} is not a number of seconds") from None
    return max(stamp, ZIP_EPOCH)


# -- contents ---------------------------------------------------------------------------
def pack_files(
    entries: Sequence[Entry], archs: Sequence[str], version: str = __version__
) -> dict[str, bytes]:
    """Every member of the wheel except RECORD, by archive name."""
    name, archs = pack_name(archs), sorted_archs(archs)
    _check_entries(entries, archs)
    root = f"{name.package}/{_STORE_DIR}"
    files: dict[str, bytes] = {f"{name.package}/__init__.py": _init_py(name, archs, version).encode()}
    for entry in entries:
        files.update(_entry_files(entry, f"{root}/{entry.key[:2]}/{entry.key}"))
        label = f"{entry.manifest['variant']}@{entry.manifest['arch']}"
        files[f"{root}/index/{label}.json"] = (json.dumps({"key": entry.key}) + "\n").encode()
    info = make_pack_info(name.dist, archs, list(entries), version)
    files[f"{root}/{PACK_FILE}"] = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    if version == __version__:  # what this compressc serves, so that the runtime need not compute it
        files[f"{root}/{WANTED_FILE}"] = (json.dumps(_wanted(entries), sort_keys=True) + "\n").encode()
    dist_info = f"{name.package}-{version}.dist-info"
    files[f"{dist_info}/METADATA"] = _metadata(name, archs, len(entries), version).encode()
    files[f"{dist_info}/WHEEL"] = _wheel_file(version).encode()
    files[f"{dist_info}/entry_points.txt"] = (
        f"[{ENTRY_POINT_GROUP}]\n{name.tag} = {name.package}:ROOT\n".encode()
    )
    files[f"{dist_info}/top_level.txt"] = f"{name.package}\n".encode()
    return files


def _wanted(entries: Sequence[Entry]) -> dict:
    """wanted.json: the default builds of the packed entries' variants (packs/wanted.py)."""
    labels = [(spec_of(e.manifest), e.manifest["arch"]) for e in entries]
    return wanted_file([(spec, arch) for spec, arch in labels if spec is not None])


def _check_entries(entries: Sequence[Entry], archs: list[str]) -> None:
    if not entries:
        raise WheelError("no kernels to pack")
    labels = [f"{e.manifest['variant']}@{e.manifest['arch']}" for e in entries]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise WheelError(f"two entries for {', '.join(duplicates)}: a pack holds one kernel per variant@arch")
    stray = sorted({e.manifest["arch"] for e in entries} - set(archs))
    if stray:
        raise WheelError(f"entries for {', '.join(stray)}, which is not among the pack's archs {archs}")


def _entry_files(entry: Entry, prefix: str) -> dict[str, bytes]:
    """The entry's files; the cubin is re-hashed against its manifest on the way in."""
    files = {f"{prefix}/{entry.manifest['cubin']}": entry.cubin_bytes()}
    for path in sorted(entry.path.iterdir()):
        skip = (MANIFEST, entry.manifest["cubin"], *UNPACKED_STAGES)
        if path.is_file() and path.name not in skip:
            files[f"{prefix}/{_stage_name(path.name)}"] = path.read_bytes()
    manifest = dict(entry.manifest, compile_seconds=0.0)  # wall time: not an input of the build
    files[f"{prefix}/{MANIFEST}"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files


def _stage_name(name: str) -> str:
    """The packed name of a stage file: entries built before the rename hold kernel.py, which
    pip would byte-compile into the store on install (check-wheel-contents W004)."""
    return KERNEL_SOURCE if name == LEGACY_KERNEL_SOURCE else name


def _init_py(name: PackName, archs: list[str], version: str) -> str:
    return (
        f'"""compressc kernel pack {name.dist}: prebuilt cubins for {", ".join(archs)} '
        f'(compressc {version})."""\n\n'
        "import os\n\n"
        f"NAME = {name.dist!r}\n"
        f"COMPRESSC_VERSION = {version!r}\n"
        f"ARCHS = {tuple(archs)!r}\n"
        "# The Store-shaped kernel directory compressc.runtime finds through the\n"
        f"# {ENTRY_POINT_GROUP!r} entry point.\n"
        f"ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), {_STORE_DIR!r})\n"
    )


def _metadata(name: PackName, archs: list[str], count: int, version: str) -> str:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {name.dist}\n"
        f"Version: {version}\n"
        f"Summary: Prebuilt compressc kernels (cubins) for {', '.join(archs)}\n"
        f"Requires-Dist: compressc=={version}\n"
        "License: Apache-2.0\n"
        "Description-Content-Type: text/plain\n"
        "\n"
        f"{count} DeepSeek-V4 KV-compressor kernels built by compressc {version} for {', '.join(archs)}.\n"
        "compressc.runtime loads them with no build toolchain installed; "
        "`compressc inspect` lists them.\n"
    )


def _wheel_file(version: str) -> str:
    return f"Wheel-Version: 1.0\nGenerator: compressc {version}\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def record(files: dict[str, bytes], record_name: str) -> bytes:
    """RECORD: `name,sha256=<urlsafe base64, unpadded>,size` per member, itself last with no hash."""
    lines = []
    for member, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{member},sha256={digest},{len(data)}\n")
    return ("".join(lines) + f"{record_name},,\n").encode()


# -- writing ----------------------------------------------------------------------------
def ordered_members(files: dict[str, bytes], dist_info: str) -> dict[str, bytes]:
    """Package files sorted, then the .dist-info files sorted, then RECORD (wheel convention)."""
    package = sorted(n for n in files if not n.startswith(f"{dist_info}/"))
    meta = sorted(n for n in files if n.startswith(f"{dist_info}/"))
    ordered = {n: files[n] for n in package + meta}
    record_name = f"{dist_info}/RECORD"
    ordered[record_name] = record(ordered, record_name)
    return ordered


def write_wheel(
    entries: Sequence[Entry],
    archs: Sequence[str],
    out_dir: Path,
    *,
    version: str = __version__,
    max_size: int | None = None,
    date_time: tuple[int, int, int, int, int, int] = ZIP_EPOCH,
) -> WheelInfo:
    """Write the pack wheel of `entries` into `out_dir` atomically; WheelError above `max_size`.

    On any failure nothing is left in `out_dir` (nor `out_dir` itself, if this call made it).
    """
    name = pack_name(archs)
    members = ordered_members(pack_files(entries, archs, version), f"{name.package}-{version}.dist-info")
    out_dir = Path(out_dir)
    made_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_filename(name, version)
    tmp = out_dir / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        _write_zip(tmp, members, date_time)
        size = tmp.stat().st_size
        if max_size is not None and size > max_size:
            raise WheelError(
                f"{target.name} would be {format_size(size)} ({len(entries)} kernels), above the "
                f"maximum of {format_size(max_size)}; nothing was written"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if made_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return WheelInfo(target, size, name, len(entries))


def format_size(size: int) -> str:
    """1536 -> "1.5 KiB" (exact bytes below 1 KiB)."""
    value, unit = float(size), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _write_zip(path: Path, members: dict[str, bytes], date_time: tuple[int, ...]) -> None:
    with open(path, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
        for member, data in members.items():
            info = zipfile.ZipInfo(member, date_time)
            info.external_attr = _FILE_MODE
            info.create_system = 3  # Unix, so the mode above is honoured on every host
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
        zf.close()
        raw.flush()
        os.fsync(raw.fileno())
