"""Run compressc kernels from torch: find the cubin, load it with cuda-python, launch it.

Imports neither cutlass nor CUDA: `compressc.runtime.loader` (cuda-python) is imported
on the first launch. The names below are imported on first use (PEP 562), so that
`from compressc.runtime import ops` costs only what the C4A and C128A ops need (the cold
start: import to the first launch, benchmarks/cold_start.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time each name loads on first use
    from compressc.runtime.args import pack_args as pack_args
    from compressc.runtime.bounds_kernel import check_kernel_bounds as check_kernel_bounds
    from compressc.runtime.loader import ArchMismatchError as ArchMismatchError
    from compressc.runtime.loader import CudaError as CudaError
    from compressc.runtime.ops import compress_c4a as compress_c4a
    from compressc.runtime.ops import compress_c128a as compress_c128a
    from compressc.runtime.ops import compress_c128a_online as compress_c128a_online
    from compressc.runtime.ops import compress_indexer_fp8 as compress_indexer_fp8
    from compressc.runtime.ops import compress_indexer_mxfp4 as compress_indexer_mxfp4
    from compressc.runtime.ops import kernel_for as kernel_for
    from compressc.runtime.ops import kernel_spec as kernel_spec
    from compressc.runtime.ops import online_c128_merge as online_c128_merge
    from compressc.runtime.ops import reserve_c128a_scratch as reserve_c128a_scratch
    from compressc.runtime.resolve import KernelImage as KernelImage
    from compressc.runtime.resolve import KernelNotFoundError as KernelNotFoundError
    from compressc.runtime.resolve import ManifestError as ManifestError
    from compressc.runtime.resolve import arch_for_capability as arch_for_capability
    from compressc.runtime.resolve import build_command as build_command
    from compressc.runtime.resolve import find_kernel as find_kernel
    from compressc.runtime.resolve import iter_pack_roots as iter_pack_roots
    from compressc.runtime.startup import op_kernels as op_kernels
    from compressc.runtime.startup import preload as preload

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
    # The value found on first use is kept here (later uses cost nothing), as the eager
    # `from ... import` did at import: patch a name where its caller looks it up.
    module = _WHERE.get(name)
    if module is None:  # a submodule, as `import compressc.runtime` used to load ops and the rest
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
