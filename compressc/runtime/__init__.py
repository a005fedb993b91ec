"""Run compressc kernels from torch: find the cubin, load it with cuda-python, launch it.

Imports neither cutlass nor CUDA: `compressc.runtime.loader` (cuda-python) is imported
on the first launch, and `CudaError` / `ArchMismatchError` are fetched from it lazily.
"""

from __future__ import annotations

from typing import Any

from compressc.runtime.args import pack_args
from compressc.runtime.bounds_kernel import check_kernel_bounds
from compressc.runtime.ops import (
    compress_c4a,
    compress_c128a,
    compress_c128a_online,
    compress_indexer_fp8,
    compress_indexer_mxfp4,
    kernel_for,
    kernel_spec,
    online_c128_merge,
    reserve_c128a_scratch,
)
from compressc.runtime.resolve import (
    KernelImage,
    KernelNotFoundError,
    ManifestError,
    arch_for_capability,
    build_command,
    find_kernel,
    iter_pack_roots,
)
from compressc.runtime.startup import op_kernels, preload

_FROM_LOADER = ("ArchMismatchError", "CudaError")

__all__ = [
    "ArchMismatchError",
    "CudaError",
    "KernelImage",
    "KernelNotFoundError",
    "ManifestError",
    "arch_for_capability",
    "build_command",
    "check_kernel_bounds",
    "compress_c128a",
    "compress_c128a_online",
    "compress_c4a",
    "compress_indexer_fp8",
    "compress_indexer_mxfp4",
    "find_kernel",
    "iter_pack_roots",
    "kernel_for",
    "kernel_spec",
    "online_c128_merge",
    "op_kernels",
    "pack_args",
    "preload",
    "reserve_c128a_scratch",
]


def __getattr__(name: str) -> Any:
    if name in _FROM_LOADER:
        from compressc.runtime import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'compressc.runtime' has no attribute {name!r}")
