"""The manifest of a cache entry: what a loader needs to launch its cubin, as JSON.

{"format": 1, "key", "compressc_version", "kernel", "variant", "arch", "entry",
 "params": [{"name", "kind", "dtype", "align"}, ...], "block": [x, y, z], "grid",
 "smem_dynamic", "smem_static", "registers", "spill_stores", "spill_loads", "stack",
 "barriers", "cubin": "kernel.cubin", "cubin_sha256", "toolchain": {...}, "pipeline",
 "compile_seconds", "programmatic", "launch_sha256"}  ("programmatic": optional, false when
 absent; "launch_sha256": the seal over the launch fields, compressc.cache.integrity)

Pure standard library: the runtime validates manifests with CuTe DSL not installed.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from compressc import __version__
from compressc.cache.arch import normalize_arch
from compressc.specs.abi import CTYPE_SIZE, Param

if TYPE_CHECKING:
    from compressc.driver.compile import Artifacts
    from compressc.specs.launch import LaunchInfo

MANIFEST_FORMAT = 1
CUBIN_FILE = "kernel.cubin"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STRINGS = (
    "key",
    "compressc_version",
    "kernel",
    "variant",
    "arch",
    "entry",
    "grid",
    "cubin",
    "cubin_sha256",
    "pipeline",
)
_COUNTS = ("smem_dynamic", "smem_static", "registers", "spill_stores", "spill_loads", "stack", "barriers")
FIELDS = ("format", *_STRINGS, *_COUNTS, "params", "block", "toolchain", "compile_seconds")
OPTIONAL_FIELDS = ("programmatic", "launch_sha256")  # programmatic: false when absent; seal: integrity.py


def make_manifest(
    *,
    key: str,
    kernel: str,
    variant: str,
    launch: LaunchInfo,
    artifacts: Artifacts,
    toolchain: dict[str, str],
    pipeline: str,
    compressc_version: str = __version__,
) -> dict[str, Any]:
    """The manifest of one build: `launch` is the lowered module's launch record, `artifacts`
    what compile_source returned (entry and block already checked against `launch`)."""
    from compressc.cache.integrity import seal

    report = artifacts.report
    return seal({
        "format": MANIFEST_FORMAT,
        "key": key,
        "compressc_version": compressc_version,
        "kernel": kernel,
        "variant": variant,
        "arch": artifacts.arch,
        "entry": launch.entry,
        "params": [{"name": p.name, "kind": p.kind, "dtype": p.dtype, "align": p.align}
                   for p in launch.params],
        "block": list(launch.block),
        "grid": launch.grid.spelling(),
        "smem_dynamic": launch.smem_dynamic,
        "smem_static": report.smem_static,
        "registers": report.registers,
        "spill_stores": report.spill_stores,
        "spill_loads": report.spill_loads,
        "stack": report.stack,
        "barriers": report.barriers,
        "cubin": CUBIN_FILE,
        "cubin_sha256": hashlib.sha256(artifacts.cubin).hexdigest(),
        "toolchain": dict(toolchain),
        "pipeline": pipeline,
        "compile_seconds": artifacts.seconds,
        "programmatic": launch.programmatic,
    })


def manifest_params(manifest: dict[str, Any]) -> tuple[Param, ...]:
    """The parameter list of a (valid) manifest as `Param`s."""
    return tuple(Param(p["name"], p["kind"], p["dtype"], p["align"]) for p in manifest["params"])


def validate_manifest(d: Any) -> list[str]:
    """Every problem with `d` as a manifest, one readable line each; [] when valid."""
    if not isinstance(d, dict):
        return [f"manifest is a {type(d).__name__}, expected a JSON object"]
    problems = [f"missing field {name!r}" for name in FIELDS if name not in d]
    if d.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        problems.append(f"format is {d['format']!r}, this compressc reads format {MANIFEST_FORMAT}")
    problems += [
        f"{n} is {d[n]!r}, expected a non-empty string" for n in _STRINGS if n in d and not _text(d[n])
    ]
    problems += [f"{n} is {d[n]!r}, expected an int >= 0" for n in _COUNTS if n in d and not _count(d[n])]
    return problems + _check_values(d)


def _check_values(d: dict[str, Any]) -> list[str]:
    problems = []
    for name in ("key", "cubin_sha256"):
        if _text(d.get(name)) and not _HEX64.match(d[name]):
            problems.append(f"{name} is {d[name]!r}, expected 64 lowercase hex digits")
    if _text(d.get("arch")) and not _canonical_arch(d["arch"]):
        problems.append(f"arch is {d['arch']!r}, expected a canonical name such as 'sm_90a'")
    if _text(d.get("cubin")) and ("/" in d["cubin"] or "\\" in d["cubin"] or d["cubin"].startswith(".")):
        problems.append(f"cubin is {d['cubin']!r}, expected a plain file name inside the entry")
    block = d.get("block")
    if "block" in d and not (
        isinstance(block, list) and len(block) == 3 and all(_count(b) and b for b in block)
    ):
        problems.append(f"block is {block!r}, expected three positive ints")
    if "toolchain" in d and not isinstance(d["toolchain"], dict):
        problems.append(f"toolchain is {d['toolchain']!r}, expected an object")
    if not isinstance(d.get("programmatic", False), bool):
        problems.append(f"programmatic is {d['programmatic']!r}, expected true or false")
    seconds = d.get("compile_seconds")
    if "compile_seconds" in d and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
        problems.append(f"compile_seconds is {seconds!r}, expected a number")
    return problems + _check_params(d.get("params", []))


def _check_params(params: Any) -> list[str]:
    if not isinstance(params, list):
        return [f"params is {params!r}, expected a list"]
    problems = []
    for i, p in enumerate(params):
        if not isinstance(p, dict) or set(p) != {"name", "kind", "dtype", "align"}:
            problems.append(f"params[{i}] is {p!r}, expected an object with name, kind, dtype, align")
        elif p["kind"] not in CTYPE_SIZE or not _text(p["name"]) or not _count(p["align"]):
            problems.append(
                f"params[{i}] is {p!r}: kind must be one of {', '.join(CTYPE_SIZE)}, "
                "name a non-empty string, align an int >= 0"
            )
    return problems


def _canonical_arch(arch: str) -> bool:
    try:
        return normalize_arch(arch) == arch
    except ValueError:
        return False


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
