"""Argument checks of the torch-facing ops (SPEC.md §2), runnable on CPU tensors.

Each `*_values` function checks one group of the op's arguments and returns the kernel
ABI values it supplies (pointers as `data_ptr()`, derived scalars as in
`compressc.specs.abi`). Errors are TypeError for a wrong type or dtype, ValueError for
a wrong shape, stride, alignment or value; each message names the argument, what was
expected and what was given. Only metadata is read: no device synchronisation, so the
checks are safe inside CUDA graph capture. The device check is separate (`check_device`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from compressc.specs.family import KernelSpec

Values = dict[str, int | float]
VECTOR_ALIGN = 16  # bytes: the kernels read and write these buffers with 128-bit accesses
_WEIGHT_DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}


def _tensor(name: str, value: object, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {value.dtype}")
    return value


def _require(ok: bool, name: str, expected: str, given: object) -> None:
    if not ok:
        raise ValueError(f"{name} must {expected}, got {given}")


def _aligned(name: str, t: torch.Tensor) -> int:
    ptr = t.data_ptr()
    _require(ptr % VECTOR_ALIGN == 0, name, f"start at a {VECTOR_ALIGN}-byte aligned address", f"{ptr:#x}")
    return ptr


def _index_1d(name: str, value: object, dtype: torch.dtype) -> torch.Tensor:
    t = _tensor(name, value, dtype)
    _require(t.dim() == 1, name, "be 1-D", f"shape {tuple(t.shape)}")
    _require(t.numel() <= 1 or t.stride(0) == 1, name, "be contiguous (stride 1)", f"stride {t.stride(0)}")
    return t


def as_int(name: str, value: object) -> int:
    """A Python int from an int, a NumPy integer or a 0-d CPU tensor (a CUDA one would sync)."""
    if isinstance(value, torch.Tensor):
        _require(
            value.numel() == 1 and value.device.type == "cpu" and not value.is_floating_point(),
            name,
            "be an int or a one-element integer CPU tensor",
            f"{value.dtype} tensor on {value.device}",
        )
        return int(value.item())
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value.__index__()


def log2_exact(name: str, value: object) -> int:
    """log2 of a positive power of two; ValueError otherwise."""
    n = as_int(name, value)
    _require(n > 0 and n & (n - 1) == 0, name, "be a power of two", n)
    return n.bit_length() - 1


def weight_dtype_name(rms_norm_weight: object) -> str:
    """ "bf16" or "f32": the RMSNorm weight's dtype picks the kernel variant."""
    if not isinstance(rms_norm_weight, torch.Tensor):
        raise TypeError(f"rms_norm_weight must be a torch.Tensor, got {type(rms_norm_weight).__name__}")
    name = _WEIGHT_DTYPES.get(rms_norm_weight.dtype)
    if name is None:
        raise TypeError(
            f"rms_norm_weight must have dtype torch.bfloat16 or torch.float32, got {rms_norm_weight.dtype}"
        )
    return name


# -- argument groups ------------------------------------------------------------------
def row_values(
    token_to_req_indices: object, positions: object, slot_mapping: object, kv_slot_mapping: object
) -> Values:
    """Per-row index tensors: T = slot_mapping.numel() rows are launched."""
    req = _index_1d("token_to_req_indices", token_to_req_indices, torch.int32)
    pos = _index_1d("positions", positions, torch.int64)
    slots = _index_1d("slot_mapping", slot_mapping, torch.int64)
    kv = _index_1d("kv_slot_mapping", kv_slot_mapping, torch.int64)
    T = slots.numel()
    _require(
        req.numel() >= T,
        "token_to_req_indices",
        f"have at least T = slot_mapping.numel() = {T} entries",
        req.numel(),
    )
    return {
        "token_to_req_indices": req.data_ptr(),
        "positions": pos.data_ptr(),
        "slot_mapping": slots.data_ptr(),
        "kv_slot_mapping": kv.data_ptr(),
        "num_rows": T,
        "num_positions": pos.numel(),
        "num_kv_slots": kv.numel(),
    }


def state_values(spec: KernelSpec, state_cache: object, block_table: object, block_size: object) -> Values:
    """The paged compressor state [pages, block_size, 2*state_width] and its page table."""
    state = _tensor("state_cache", state_cache, torch.float32)
    width = 2 * spec.state_width
    _require(
        state.dim() == 3 and state.shape[2] == width,
        "state_cache",
        f"have shape [num_pages, block_size, {width}] (2 * state width of {spec.variant})",
        tuple(state.shape),
    )
    shift = log2_exact("block_size", block_size)
    _require(
        state.shape[1] == 1 << shift,
        "block_size",
        f"equal state_cache.shape[1] = {state.shape[1]}",
        1 << shift,
    )
    _require(
        state.stride(2) == 1 and (state.shape[1] == 1 or state.stride(1) == width),
        "state_cache",
        f"be contiguous in its last two dims (strides (*, {width}, 1))",
        f"strides {state.stride()}",
    )
    _require(
        state.stride(0) % 4 == 0,
        "state_cache",
        "have a page stride that is a multiple of 4 elements (16 bytes)",
        f"stride(0) = {state.stride(0)}",
    )
    table = _tensor("block_table", block_table, torch.int32)
    _require(table.dim() == 2, "block_table", "be 2-D [num_reqs, max_pages]", f"shape {tuple(table.shape)}")
    _require(
        table.shape[1] <= 1 or table.stride(1) == 1,
        "block_table",
        "have contiguous rows (stride(1) == 1)",
        f"strides {table.stride()}",
    )
    return {
        "state_cache": _aligned("state_cache", state),
        "block_table": table.data_ptr(),
        "block_table_stride": table.stride(0),
        "state_page_stride": state.stride(0),
        "state_block_shift": shift,
    }


def store_values(
    spec: KernelSpec,
    rms_norm_weight: object,
    rms_norm_eps: object,
    cos_sin_cache: object,
    k_cache: object,
    kv_cache_block_size: object,
) -> Values:
    """RMSNorm weight and eps, the rope table and the compressed-KV cache pages."""
    weight = _tensor("rms_norm_weight", rms_norm_weight, _dtype_of(spec.weight_dtype))
    _require(
        tuple(weight.shape) == (spec.head,) and (spec.head == 1 or weight.stride(0) == 1),
        "rms_norm_weight",
        f"be a contiguous [head_size] = [{spec.head}] vector",
        f"shape {tuple(weight.shape)}, strides {weight.stride()}",
    )
    if isinstance(rms_norm_eps, bool) or not isinstance(rms_norm_eps, (int, float)):
        raise TypeError(f"rms_norm_eps must be a float, got {type(rms_norm_eps).__name__}")
    cos_sin = _tensor("cos_sin_cache", cos_sin_cache, torch.float32)
    _require(
        cos_sin.dim() == 2 and cos_sin.shape[1] == spec.rope,
        "cos_sin_cache",
        f"have shape [max_position, rope] with rope = {spec.rope}",
        f"shape {tuple(cos_sin.shape)}",
    )
    _require(cos_sin.is_contiguous(), "cos_sin_cache", "be contiguous", f"strides {cos_sin.stride()}")
    cache, shift = _k_cache(spec, k_cache, kv_cache_block_size)
    return {
        "rms_norm_weight": _aligned("rms_norm_weight", weight),
        "cos_sin_cache": _aligned("cos_sin_cache", cos_sin),
        "k_cache": _aligned("k_cache", cache),
        "rms_norm_eps": float(rms_norm_eps),
        "k_cache_page_stride": cache.stride(0) * cache.element_size(),
        "kv_block_shift": shift,
    }


def _k_cache(spec: KernelSpec, k_cache: object, kv_cache_block_size: object) -> tuple[torch.Tensor, int]:
    cache = _tensor("k_cache", k_cache, torch.uint8)
    _require(
        cache.dim() >= 2,
        "k_cache",
        "have a page dimension first ([num_pages, ...])",
        f"shape {tuple(cache.shape)}",
    )
    shift = log2_exact("kv_cache_block_size", kv_cache_block_size)
    stride, store = cache.stride(0), spec.store
    _require(
        stride % VECTOR_ALIGN == 0,
        "k_cache",
        f"have a page stride (stride(0), bytes) that is a multiple of {VECTOR_ALIGN}",
        stride,
    )
    need = (1 << shift) * (store.token_stride + store.scale_dim)
    _require(
        stride >= need,
        "k_cache",
        f"have a page stride (stride(0), bytes) of at least kv_cache_block_size * "
        f"({store.token_stride} + {store.scale_dim}) = {need}",
        stride,
    )
    return cache, shift


def compressed_values(spec: KernelSpec, compressed_kv: object, num_rows: int) -> Values:
    """The fp32 [>= T, head] scratch rows that C128A's two kernels pass between them."""
    kv = _tensor("compressed_kv", compressed_kv, torch.float32)
    _require(
        kv.dim() == 2 and kv.shape[0] >= num_rows and kv.shape[1] == spec.head,
        "compressed_kv",
        f"have shape [>= T, head_size] = [>= {num_rows}, {spec.head}]",
        f"shape {tuple(kv.shape)}",
    )
    _require(kv.is_contiguous(), "compressed_kv", "be contiguous", f"strides {kv.stride()}")
    return {"compressed_kv": _aligned("compressed_kv", kv)}


def check_device(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    """The one CUDA device every tensor lives on; ValueError naming the first that differs."""
    (first, device), *rest = ((name, t.device) for name, t in tensors.items())
    for name, other in rest:
        _require(other == device, name, f"be on the same device as {first} ({device})", other)
    _require(device.type == "cuda", first, "be on a CUDA device", device)
    return device


def _dtype_of(weight_dtype: str) -> torch.dtype:
    return {name: dtype for dtype, name in _WEIGHT_DTYPES.items()}[weight_dtype]
