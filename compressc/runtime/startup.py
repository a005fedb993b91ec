"""Resolve and load, at start-up, every kernel a configuration will launch.

The first call of an op otherwise finds its kernel (packs -> user cache -> JIT build) and
loads it; in a server that first call is a request, and inside CUDA graph capture a load
is an error. `preload` does both up front, on the device the ops will run on. With
COMPRESSC_NO_JIT=1 a kernel no pack or cache has is a KernelNotFoundError naming the
variant, the kernel wheel to install and the `compressc build` command.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from compressc.specs.family import KernelSpec

OPS = ("c4a", "c128a", "indexer_fp8", "indexer_mxfp4", "c128a_online", "c128a_ring")
_HEADS = {"indexer_fp8": (128, 128), "indexer_mxfp4": (128, 32)}
WEIGHT_DTYPES = {"bf16": "bf16", "f32": "f32", torch.bfloat16: "bf16", torch.float32: "f32"}


def op_kernels(op: str, weight_dtype: str = "bf16", head_size: int | None = None,
               quant_block: int | None = None, cache_format: str | None = None,
               rotate: bool = False) -> list[KernelSpec]:
    """The kernels one op launches: C128A is its fp32 compress kernel and its store; the online
    C128A step its merge kernel and the same store. cache_format: the main KV ops'
    ("fp8_ds_mla", "full_bf16", "full_fp8"); rotate: the indexers' Hadamard rotation."""
    from compressc.runtime.ops import kernel_spec

    if op not in OPS:
        raise ValueError(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    head, block = _HEADS.get(op, (512, 64))
    head, block = head_size or head, quant_block or block
    if op == "c128a_online":
        return [kernel_spec("c128a_online", head, block, "f32"),
                kernel_spec("c128a_store", head, block, weight_dtype, cache_format)]
    if op == "c128a_ring":  # the ring compress kernel (docs/kernels.md §10) and the same store
        from compressc.specs.family import make_spec

        return [make_spec("c128a_compress", head, block, weight_dtype="f32", state_layout="ring"),
                kernel_spec("c128a_store", head, block, weight_dtype, cache_format)]
    if op == "c128a":
        return [kernel_spec("c128a_compress", head, block, "f32"),
                kernel_spec("c128a_store", head, block, weight_dtype, cache_format)]
    fmt = cache_format if op == "c4a" else None
    return [kernel_spec(op, head, block, weight_dtype, fmt, rotate)]


def preload(ops: Iterable[str] = OPS, *, weight_dtypes: Iterable[str | torch.dtype] = ("bf16",),
            device: torch.device | str | int | None = None, cache_format: str | None = None) -> list[str]:
    """Load every kernel of `ops` x `weight_dtypes` (RMSNorm weight dtypes) on `device`
    (default: the current CUDA device), the main KV ops' in `cache_format` (default packed);
    returns their variant names, in load order."""
    from compressc.runtime.ops import kernel_for

    target = _device(device)
    loaded: list[str] = []
    for op in ops:
        for dtype in weight_dtypes:
            for spec in op_kernels(op, _weight_name(dtype), cache_format=cache_format):
                if spec.variant not in loaded:
                    kernel_for(spec, target)
                    loaded.append(spec.variant)
    return loaded


def _weight_name(dtype: str | torch.dtype) -> str:
    name = WEIGHT_DTYPES.get(dtype)
    if name is None:
        raise ValueError(f"weight dtype {dtype!r}: compressc kernels take a bf16 or f32 RMSNorm weight")
    return name


def _device(device: torch.device | str | int | None) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if target.type != "cuda":
        raise ValueError(f"preload needs a CUDA device, got {target}")
    return target if target.index is not None else torch.device("cuda", torch.cuda.current_device())
