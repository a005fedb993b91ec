"""Run compressc kernels from torch: find the cubin, load it with cuda-python, launch it.

Imports neither cutlass nor CUDA: `compressc.runtime.loader` (cuda-python) is imported
on the first launch. The names below are imported on first use (PEP 562), so that
`from compressc.runtime import ops` costs only what the C4A and C128A ops need (the cold
start: import to the first launch, benchmarks/cold_start.py).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_WHERE = {
    "pack_args": "args",
    "check_kernel_bounds": "bounds_kernel",
    **dict.fromkeys(("compress_c4a", "compress_c128a", "compress_c128a_online", "compress_indexer_fp8",
                     "compress_indexer_mxfp4", "kernel_for", "kernel_spec", "online_c128_merge",
                     "reserve_c128a_scratch"), "ops"),
    **dict.fromkeys(("KernelImage", "KernelNotFoundError", "ManifestError", "arch_for_capability",
                     "build_command", "find_kernel", "iter_pack_roots"), "resolve"),
    "op_kernels": "startup", "preload": "startup",
    "ArchMismatchError": "loader", "CudaError": "loader",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
