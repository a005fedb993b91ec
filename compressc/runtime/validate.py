"""Argument checks of the torch-facing ops (docs/kernels.md §2), runnable on CPU tensors.

Each `*_values` function checks one group of the op's arguments and returns the kernel
ABI values it supplies (pointers as `data_ptr()`, derived scalars as in
`compressc.specs.abi`). Errors are TypeError for a wrong type or dtype, ValueError for
a wrong shape, stride, alignment or value; each message names the argument, what was
expected and what was given. Only metadata is read: no device synchronisation, so the
checks are safe inside CUDA graph capture. The device check is separate (`check_device`).
These checks run on every launch: messages are formatted only when a check fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from compressc.specs.family import KernelSpec

Values = dict[str, int | float]
VECTOR_ALIGN = 16  # bytes: the kernels read and write these buffers with 128-bit accesses
F32_MAX = 3.4028234663852886e38  # rms_norm_eps travels as an f32 kernel parameter
_WEIGHT_DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}
_DTYPE_OF = {name: dtype for dtype, name in _WEIGHT_DTYPES.items()}


def _invalid(name: str, expected: str, given: object) -> ValueError:
    return ValueError(f"{name} must {expected}, got {given}")


def _tensor(name: str, value: object, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {value.dtype}")
    return value


def _aligned(name: str, t: torch.Tensor) -> int:
    ptr = t.data_ptr()
    if ptr % VECTOR_ALIGN:
        raise _invalid(name, f"start at a {VECTOR_ALIGN}-byte aligned address", f"{ptr:#x}")
    return ptr


def _index_1d(name: str, value: object, dtype: torch.dtype) -> torch.Tensor:
    t = _tensor(name, value, dtype)
    if t.dim() != 1:
        raise _invalid(name, "be 1-D", f"shape {tuple(t.shape)}")
    if t.stride(0) != 1 and t.numel() > 1:
        raise _invalid(name, "be contiguous (stride 1)", f"stride {t.stride(0)}")
    return t


def as_int(name: str, value: object) -> int:
    """A Python int from an int, a NumPy integer or a 0-d CPU tensor (a CUDA one would sync)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.device.type != "cpu" or value.is_floating_point():
            given = f"{value.dtype} tensor on {value.device}"
            raise _invalid(name, "be an int or a one-element integer CPU tensor", given)
        return int(value.item())
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value.__index__()


def log2_exact(name: str, value: object) -> int:
    """log2 of a positive power of two; ValueError otherwise."""
    n = as_int(name, value)
    if n <= 0 or n & (n - 1):
        raise _invalid(name, "be a power of two", n)
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
    if req.numel() < T:
        expected = f"have at least T = slot_mapping.numel() = {T} entries"
        raise _invalid("token_to_req_indices", expected, req.numel())
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
    shape, strides, width = state.shape, state.stride(), 2 * spec.state_width
    if len(shape) != 3 or shape[2] != width:
        expected = f"have shape [num_pages, block_size, {width}] (2 * state width of {spec.variant})"
        raise _invalid("state_cache", expected, tuple(shape))
    shift = log2_exact("block_size", block_size)
    if shape[1] != 1 << shift:
        raise _invalid("block_size", f"equal state_cache.shape[1] = {shape[1]}", 1 << shift)
    if strides[2] != 1 or (strides[1] != width and shape[1] > 1):
        expected = f"be contiguous in its last two dims (strides (*, {width}, 1))"
        raise _invalid("state_cache", expected, f"strides {strides}")
    if strides[0] % 4:
        expected = "have a page stride that is a multiple of 4 elements (16 bytes)"
        raise _invalid("state_cache", expected, f"stride(0) = {strides[0]}")
    table = _block_table(block_table)
    return {
        "state_cache": _aligned("state_cache", state),
        "block_table": table.data_ptr(),
        "block_table_stride": table.stride(0),
        "state_page_stride": strides[0],
        "state_block_shift": shift,
    }


def _block_table(block_table: object) -> torch.Tensor:
    table = _tensor("block_table", block_table, torch.int32)
    if table.dim() != 2:
        raise _invalid("block_table", "be 2-D [num_reqs, max_pages]", f"shape {tuple(table.shape)}")
    if table.stride(1) != 1 and table.shape[1] > 1:
        raise _invalid("block_table", "have contiguous rows (stride(1) == 1)", f"strides {table.stride()}")
    return table


def store_values(
    spec: KernelSpec,
    rms_norm_weight: object,
    rms_norm_eps: object,
    cos_sin_cache: object,
    k_cache: object,
    kv_cache_block_size: object,
    fp8_scale: object = None,
) -> Values:
    """RMSNorm weight and eps, the rope table, the compressed-KV cache pages and (full fp8
    cache) the per-tensor scale."""
    weight = _tensor("rms_norm_weight", rms_norm_weight, _DTYPE_OF[spec.weight_dtype])
    if weight.shape != (spec.head,) or (weight.stride(0) != 1 and spec.head > 1):
        given = f"shape {tuple(weight.shape)}, strides {weight.stride()}"
        raise _invalid("rms_norm_weight", f"be a contiguous [head_size] = [{spec.head}] vector", given)
    if isinstance(rms_norm_eps, bool) or not isinstance(rms_norm_eps, (int, float)):
        raise TypeError(f"rms_norm_eps must be a float, got {type(rms_norm_eps).__name__}")
    _check_eps(rms_norm_eps)
    cos_sin = _tensor("cos_sin_cache", cos_sin_cache, torch.float32)
    if cos_sin.dim() != 2 or cos_sin.shape[1] != spec.rope:
        expected = f"have shape [max_position, rope] with rope = {spec.rope}"
        raise _invalid("cos_sin_cache", expected, f"shape {tuple(cos_sin.shape)}")
    if not cos_sin.is_contiguous():
        raise _invalid("cos_sin_cache", "be contiguous", f"strides {cos_sin.stride()}")
    fmt = spec.format
    full = fmt is not None and fmt.row_stride == "runtime"
    cache, shift = _full_cache(spec, k_cache, kv_cache_block_size) if full else \
        _k_cache(spec, k_cache, kv_cache_block_size)
    values = {
        "rms_norm_weight": _aligned("rms_norm_weight", weight),
        "cos_sin_cache": _aligned("cos_sin_cache", cos_sin),
        "k_cache": _aligned("k_cache", cache),
        "rms_norm_eps": float(rms_norm_eps),
        "k_cache_page_stride": cache.stride(0),  # uint8: elements are bytes
        "kv_block_shift": shift,
    }
    if full:
        values["k_cache_token_stride"] = cache.stride(1)
    if fmt is not None and fmt.scale_operand:
        values[fmt.scale_operand] = _scale_tensor(fmt.scale_operand, fp8_scale, fmt.name)
    elif fp8_scale is not None:
        raise _invalid("fp8_scale", f"be None for the {spec.cache_format} cache (only full_fp8 has a scale)",
                       type(fp8_scale).__name__)
    return values


_FULL_DTYPES = {"full_bf16": torch.bfloat16, "full_fp8": torch.float8_e4m3fn}


def _full_cache(spec: KernelSpec, k_cache: object, kv_cache_block_size: object) -> tuple[torch.Tensor, int]:
    """A full cache [num_pages, B, head] of bf16 / float8_e4m3fn (or its uint8 byte view):
    rows k_cache.stride(1) bytes apart, pages stride(0) bytes apart (docs/kernels.md §8)."""
    want = _FULL_DTYPES[spec.cache_format]
    if not isinstance(k_cache, torch.Tensor):
        raise TypeError(f"k_cache must be a torch.Tensor, got {type(k_cache).__name__}")
    if k_cache.dtype not in (want, torch.uint8):
        raise TypeError(f"k_cache must have dtype {want} (or its uint8 view) for the {spec.cache_format} "
                        f"cache, got {k_cache.dtype}")
    row_bytes = spec.store.token_stride
    if k_cache.dim() != 3 or k_cache.shape[2] * k_cache.element_size() != row_bytes:
        expected = (f"be 3-D [num_pages, B, {spec.head}] ({row_bytes} bytes a row) for the "
                    f"{spec.cache_format} cache")
        raise _invalid("k_cache", expected, f"shape {tuple(k_cache.shape)} of {k_cache.dtype}")
    cache = k_cache.view(torch.uint8)
    shift = log2_exact("kv_cache_block_size", kv_cache_block_size)
    if cache.shape[1] != 1 << shift:
        raise _invalid("kv_cache_block_size", f"equal k_cache.shape[1] = {cache.shape[1]}", 1 << shift)
    if cache.stride(2) != 1 or cache.stride(1) % VECTOR_ALIGN or cache.stride(1) < row_bytes:
        expected = (f"have contiguous rows whose byte stride (stride(1)) is a multiple of {VECTOR_ALIGN} "
                    f"and at least {row_bytes}")
        raise _invalid("k_cache", expected, f"byte strides {cache.stride()}")
    need = (cache.shape[1] - 1) * cache.stride(1) + row_bytes
    if cache.stride(0) % VECTOR_ALIGN or cache.stride(0) < need:
        expected = (f"have a page stride (stride(0), bytes) that is a multiple of {VECTOR_ALIGN} "
                    f"and at least {need}")
        raise _invalid("k_cache", expected, cache.stride(0))
    _check_extent(cache, need)
    return cache, shift


def _scale_tensor(name: str, value: object, fmt: str) -> int:
    if value is None:
        raise _invalid(name, f"be given for the {fmt} cache: a float32 tensor of one element on the cache's "
                       "device (vLLM passes torch.ones(1))", None)
    t = _tensor(name, value, torch.float32)
    if t.numel() < 1:
        raise _invalid(name, "hold at least one element (the kernel reads scale[0])",
                       f"shape {tuple(t.shape)}")
    ptr = t.data_ptr()
    if ptr % 4:
        raise _invalid(name, "start at a 4-byte aligned address", f"{ptr:#x}")
    return ptr


def _check_eps(rms_norm_eps: int | float) -> None:
    """NaN, inf or a value past f32 would reach the kernel as NaN/inf (or overflow packing)."""
    try:
        eps = float(rms_norm_eps)
    except OverflowError:  # an int beyond any float
        eps = math.inf
    if not (math.isfinite(eps) and 0 <= eps <= F32_MAX):
        expected = f"be a finite float32 value >= 0 (at most {F32_MAX:.7g})"
        raise _invalid("rms_norm_eps", expected, rms_norm_eps)


def _k_cache(spec: KernelSpec, k_cache: object, kv_cache_block_size: object) -> tuple[torch.Tensor, int]:
    cache = _tensor("k_cache", k_cache, torch.uint8)
    if cache.dim() < 2:
        raise _invalid(
            "k_cache", "have a page dimension first ([num_pages, ...])", f"shape {tuple(cache.shape)}"
        )
    shift = log2_exact("kv_cache_block_size", kv_cache_block_size)
    if cache.dim() >= 3 and cache.shape[1] != 1 << shift:  # [num_pages, block_size, bytes per token]
        raise _invalid("kv_cache_block_size", f"equal k_cache.shape[1] = {cache.shape[1]}", 1 << shift)
    stride, store = cache.stride(0), spec.store
    if stride % VECTOR_ALIGN:
        expected = f"have a page stride (stride(0), bytes) that is a multiple of {VECTOR_ALIGN}"
        raise _invalid("k_cache", expected, stride)
    need = (1 << shift) * (store.token_stride + store.scale_dim)
    if stride < need:
        expected = (
            f"have a page stride (stride(0), bytes) of at least kv_cache_block_size * "
            f"({store.token_stride} + {store.scale_dim}) = {need}"
        )
        raise _invalid("k_cache", expected, stride)
    _check_extent(cache, need)
    return cache, shift


def _check_extent(cache: torch.Tensor, page_bytes: int) -> None:
    """The kernels write page p at p * stride(0) + [0, page_bytes): the last page must fit in
    the storage, which a view such as k_cache[:, :16] of a padded buffer does not promise."""
    available = cache.untyped_storage().nbytes() - cache.storage_offset() * cache.element_size()
    need = (cache.shape[0] - 1) * cache.stride(0) + page_bytes if cache.shape[0] else 0
    if available < need:
        expected = (
            f"have storage for (num_pages - 1) * stride(0) + kv_cache_block_size * bytes per token = "
            f"({cache.shape[0]} - 1) * {cache.stride(0)} + {page_bytes} = {need} bytes"
        )
        raise _invalid("k_cache", expected, f"{available} bytes")


def nonempty(num_rows: int, tensors: Mapping[str, torch.Tensor]) -> None:
    """With rows to launch, every table the kernels index must have a row (and a column):
    an empty one would be indexed anyway. `tensors`: name -> tensor of the op's arguments."""
    if num_rows == 0:
        return
    for name in ("state_cache", "block_table", "cos_sin_cache", "k_cache"):
        t = tensors.get(name)
        if t is not None and (t.shape[0] == 0 or (name == "block_table" and t.shape[1] == 0)):
            expected = f"not be empty when T = {num_rows} rows are launched"
            raise _invalid(name, expected, f"shape {tuple(t.shape)}")


def compressed_values(spec: KernelSpec, compressed_kv: object, num_rows: int) -> Values:
    """The fp32 [>= T, head] scratch rows that C128A's two kernels pass between them."""
    kv = _tensor("compressed_kv", compressed_kv, torch.float32)
    if kv.dim() != 2 or kv.shape[0] < num_rows or kv.shape[1] != spec.head:
        expected = f"have shape [>= T, head_size] = [>= {num_rows}, {spec.head}]"
        raise _invalid("compressed_kv", expected, f"shape {tuple(kv.shape)}")
    if not kv.is_contiguous():
        raise _invalid("compressed_kv", "be contiguous", f"strides {kv.stride()}")
    return {"compressed_kv": _aligned("compressed_kv", kv)}


def check_device(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    """The one CUDA device every tensor lives on; ValueError naming the first that differs."""
    (first, device), *rest = ((name, t.device) for name, t in tensors.items())
    for name, other in rest:
        if other != device:
            raise _invalid(name, f"be on the same device as {first} ({device})", other)
    if device.type != "cuda":
        raise _invalid(first, "be on a CUDA device", device)
    return device
