"""What `compressc show-config` reports: versions, GPU, cache, environment, kernel packs.

Everything is read from package metadata and small probes, never by importing cutlass
(1-2 s, and absent on a GPU host that only runs prebuilt kernels): a missing piece is
reported as "not installed", not raised, because this is the command a user runs when
something is missing.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from compressc import __version__
from compressc.config import ENV_TABLE, Config

NOT_INSTALLED = "not installed"
# (report name, distribution)
_DISTS = (
    ("torch", "torch"),
    ("nvidia-cutlass-dsl", "nvidia-cutlass-dsl"),
    ("nvidia-nvjitlink", "nvidia-nvjitlink"),
    ("cuda-bindings", "cuda-bindings"),
)
_FLAVORS = ("cu13", "cu12")


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def versions() -> dict[str, str]:
    """compressc, Python and each toolchain/runtime distribution, plus the DSL flavour."""
    out = {"compressc": __version__, "python": platform.python_version()}
    out |= {name: dist_version(dist) for name, dist in _DISTS}
    out["cutlass-dsl flavor"] = dsl_flavor()
    out["nvjitlink api"] = nvjitlink_api()
    return out


def dsl_flavor() -> str:
    """Which nvidia-cutlass-dsl-libs-<flavor> is installed (compressc builds need cu13)."""
    found = [f for f in _FLAVORS if dist_version(f"nvidia-cutlass-dsl-libs-{f}") != NOT_INSTALLED]
    if not found:
        return NOT_INSTALLED
    if "cu13" not in found:
        return ", ".join(found) + " (compressc builds need cu13: pip install 'nvidia-cutlass-dsl[cu13]')"
    others = [f for f in found if f != "cu13"]
    return "cu13" + (f" (builds pin it; also installed: {', '.join(others)})" if others else "")


def nvjitlink_api() -> str:
    """The nvJitLink library's own version, as cuda-bindings loads it."""
    try:
        from cuda.bindings import nvjitlink

        return "{}.{}".format(*nvjitlink.version())
    except Exception as err:  # no library, no bindings: say why instead of failing the report
        return f"{NOT_INSTALLED} ({type(err).__name__})"


def gpu() -> dict[str, str]:
    """The first CUDA device and the arch compressc builds for it, or why there is none."""
    try:
        import torch
    except ImportError:
        return {"device": "unknown (torch is not installed)"}
    if not torch.cuda.is_available():
        return {"device": f"none (torch {torch.__version__} sees no CUDA device)"}
    from compressc.runtime.resolve import arch_for_capability

    capability = torch.cuda.get_device_capability(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "capability": "{}.{}".format(*capability),
        "arch": arch_for_capability(capability),
        "devices": str(torch.cuda.device_count()),
    }


def cache(config: Config) -> dict[str, str]:
    root = config.cache_dir
    if not root.exists():
        state = "does not exist yet (the first build creates it)"
    elif not root.is_dir():
        state = "is not a directory"
    else:
        state = "writable" if os.access(root, os.W_OK) else "read-only"
    return {"dir": str(root), "state": state, "jit": "off" if config.no_jit else "on"}


def _cache_or_problem(environ: Mapping[str, str]) -> dict[str, str]:
    """The cache section; a bad COMPRESSC_* value is reported here instead of stopping the report."""
    from compressc.config import ConfigError

    try:
        return cache(Config.from_env(environ))
    except ConfigError as err:
        return {"dir": "unknown", "state": f"error: {err}", "jit": "unknown"}


def environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The COMPRESSC_* variables (and XDG_CACHE_HOME) set in `environ`; unset ones are left out."""
    names = sorted(n for n in environ if n.startswith("COMPRESSC_") or n == "XDG_CACHE_HOME")
    return {n: environ[n] for n in names}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """COMPRESSC_* names compressc does not read: most likely typos of ones it does."""
    known = {name for name, _, _ in ENV_TABLE}
    return sorted(n for n in environ if n.startswith("COMPRESSC_") and n not in known)


def packs(arch: str | None) -> list[dict[str, Any]]:
    """Each installed kernel pack: name, version, archs, kernels, and whether it can be used."""
    import warnings

    from compressc.packs.installed import read_pack_info
    from compressc.runtime.resolve import ENTRY_POINT_GROUP

    rows = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append(_pack_row(ep, arch, read_pack_info))
    return rows


def _pack_row(ep, arch: str | None, read_info) -> dict[str, Any]:
    from compressc.runtime.resolve import _pack_dir

    row: dict[str, Any] = {"entry_point": ep.name}
    try:
        root = _pack_dir(ep.load())
        info = read_info(root) or {}
    except Exception as err:  # a broken pack is reported, not raised
        return row | {"matches": False, "problem": f"cannot load: {err}"}
    row |= {
        "name": info.get("name", str(root)),
        "root": str(root),
        "compressc_version": info.get("compressc_version"),
        "archs": info.get("archs", []),
        "kernels": len(info.get("kernels", {})),
    }
    return row | _pack_match(row, arch)


def _pack_match(row: dict[str, Any], arch: str | None) -> dict[str, Any]:
    if row["compressc_version"] != __version__:
        problem = f"built for compressc {row['compressc_version']}, this is {__version__}: it is skipped"
        return {"matches": False, "problem": problem}
    if arch is not None and not any(_runs_on(a, arch) for a in row["archs"]):
        return {"matches": False, "problem": f"no kernels for this GPU's {arch}"}
    return {"matches": True, "problem": ""}


def _runs_on(pack_arch: str, gpu_arch: str) -> bool:
    """Whether a pack's cubins for `pack_arch` run on the GPU compressc calls `gpu_arch`
    ("f" and plain targets also run on later chips of the family, runtime.resolve)."""
    from compressc.cache.arch import arch_to_cc
    from compressc.runtime.resolve import arch_runs_on

    try:
        return arch_runs_on(pack_arch, arch_to_cc(gpu_arch))
    except ValueError:  # an arch string this compressc does not know: say it does not match
        return False


def report(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The whole report as plain data (what `show-config --json` prints)."""
    device = gpu()
    return {
        "versions": versions(),
        "platform": {"system": platform.platform(), "executable": sys.executable},
        "package": {"path": str(Path(__file__).resolve().parent)},
        "gpu": device,
        "cache": _cache_or_problem(environ),
        "environment": environment(environ),
        "unknown_variables": unknown_variables(environ),
        "packs": packs(device.get("arch")),
        "variables": [{"name": n, "default": d, "meaning": m} for n, d, m in ENV_TABLE],
    }
