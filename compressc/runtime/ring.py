"""The C128 ring-state ops (docs/kernels.md §10): compress + store, and the ring's tail save.

`compress_c128a_ring` takes compress_c128a's arguments, with `block_size` the ring capacity
(as vLLM passes it for a circular state) and the raw rows of the launch as keywords (`kv`,
`score`, `ape`, `query_start_loc`); it launches the ring compress kernel, then the unchanged
c128a_store. `save_ring_tail` then writes the chunk's last rows into the ring. Every argument
is checked first (metadata only: no device synchronisation, safe under CUDA graph capture);
a bad one is one ValueError/TypeError naming it and the rule, before any lookup or launch.
"""

from __future__ import annotations

import torch

from compressc.runtime.ops import _launch_checked, _tensors, check_bounds_enabled, kernel_spec, scratch_buffer
from compressc.runtime.validate import (
    Values,
    _aligned,
    _block_table,
    _index_1d,
    _invalid,
    _tensor,
    as_int,
    check_device,
    compressed_values,
    nonempty,
    row_values,
    store_values,
    weight_dtype_name,
)
from compressc.specs.family import KernelSpec

RING_MULTIPLE = 128  # a C128 window: the ring holds whole windows, so one never wraps inside it
_NAMES = ("state_cache", "token_to_req_indices", "positions", "slot_mapping", "block_table",
          "block_size", "rms_norm_weight", "rms_norm_eps", "cos_sin_cache", "k_cache",
          "kv_slot_mapping", "kv_cache_block_size")


def ring_spec(head_size: int, quant_block: int) -> KernelSpec:
    """The ring compress kernel's spec (head and quant block checked as kernel_spec does)."""
    return kernel_spec("c128a_compress", head_size, quant_block, "f32").with_(state_layout="ring")


def ring_state_values(
    spec: KernelSpec, state_cache: object, block_table: object, block_size: object
) -> Values:
    """The ring [blocks, capacity, 2*state_width] (or whole state pages of it) and its table."""
    state = _tensor("state_cache", state_cache, torch.float32)
    width, shape = 2 * spec.state_width, state.shape
    if len(shape) != 3 or shape[2] != width:
        expected = f"have shape [num_blocks, capacity, {width}] (the ring of {spec.variant})"
        raise _invalid("state_cache", expected, tuple(shape))
    capacity = as_int("block_size", block_size)
    rule = "be the ring capacity 128 * ceil((128 + num_speculative_tokens) / 128), a positive multiple of 128"
    if capacity <= 0 or capacity % RING_MULTIPLE:
        raise _invalid("block_size", rule, capacity)
    if capacity % shape[1]:
        raise _invalid("block_size", f"be a multiple of the state page state_cache.shape[1] = {shape[1]} "
                       "(a ring is whole pages)", capacity)
    _ring_layout(state, capacity, width)
    table = _block_table(block_table)
    return {
        "state_cache": _aligned("state_cache", state),
        "block_table": table.data_ptr(),
        "block_table_stride": table.stride(0),
        "ring_block_stride": state.stride(0) if shape[1] == capacity else capacity * width,
        "ring_capacity": capacity,
    }


def _ring_layout(state: torch.Tensor, capacity: int, width: int) -> None:
    strides, page = state.stride(), state.shape[1]
    if strides[2] != 1 or (strides[1] != width and page > 1):
        raise _invalid("state_cache", f"be contiguous in its last two dims (strides (*, {width}, 1))",
                       f"strides {strides}")
    if page < capacity and strides[0] != page * width:
        raise _invalid("state_cache", f"have contiguous pages (stride(0) = {page * width}) when a ring of "
                       f"{capacity} rows spans pages of {page}", f"stride(0) = {strides[0]}")
    if strides[0] % 4:
        raise _invalid("state_cache", "have a block stride that is a multiple of 4 elements (16 bytes)",
                       f"stride(0) = {strides[0]}")
    if state.shape[0] * page < capacity:
        raise _invalid("state_cache", f"hold at least one ring of block_size = {capacity} rows",
                       f"shape {tuple(state.shape)}")


def ring_input_values(spec: KernelSpec, kv: object, score: object, ape: object, query_start_loc: object,
                      num_rows: int) -> Values:
    """The launch's raw rows kv, score [>= T, head] (rows 16-byte aligned), ape [128, head], query starts."""
    values: Values = {}
    for name, value in (("kv", kv), ("score", score)):
        t = _tensor(name, value, torch.float32)
        if t.dim() != 2 or t.shape[0] < num_rows or t.shape[1] != spec.head:
            raise _invalid(name, f"have shape [>= T, head_size] = [>= {num_rows}, {spec.head}]",
                           f"shape {tuple(t.shape)}")
        if (t.stride(1) != 1 and spec.head > 1) or t.stride(0) % 4:
            raise _invalid(name, "have contiguous rows whose stride is a multiple of 4 elements (16 bytes)",
                           f"strides {t.stride()}")
        values |= {name: _aligned(name, t), f"{name}_row_stride": t.stride(0)}
    table = _tensor("ape", ape, torch.float32)
    if tuple(table.shape) != (spec.ratio, spec.head) or not table.is_contiguous():
        raise _invalid("ape", f"be a contiguous [{spec.ratio}, {spec.head}] table",
                       f"shape {tuple(table.shape)}, strides {table.stride()}")
    starts = _index_1d("query_start_loc", query_start_loc, torch.int32)
    if starts.numel() < 2:
        raise _invalid("query_start_loc", "have num_reqs + 1 >= 2 entries", starts.numel())
    return values | {"ape": _aligned("ape", table), "query_start_loc": starts.data_ptr()}


def compress_c128a_ring(
    state_cache: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
    kv_cache_block_size: int,
    *,
    kv: torch.Tensor,
    score: torch.Tensor,
    ape: torch.Tensor,
    query_start_loc: torch.Tensor,
    head_size: int = 512,
    quant_block: int = 64,
    compressed_kv: torch.Tensor | None = None,
) -> None:
    """C128A over a ring state: the ring compress kernel, then c128a_store (docs/kernels.md §10).

    block_size: the ring capacity (rows per request's ring); slot_mapping: the ring slots
    (only the sign is read). compressed_kv: as compress_c128a (None: the device's scratch).
    """
    values = (state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
              rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size)
    args = dict(zip(_NAMES, values, strict=True), kv=kv, score=score, ape=ape,
                query_start_loc=query_start_loc, compressed_kv=compressed_kv)
    _launch_checked(_checked(head_size, quant_block, args))


def _checked(head_size: int, quant_block: int, args: dict) -> tuple | None:
    """(ABI values, device, (ring compress spec, store spec)); None when there are no rows."""
    pool_spec = ring_spec(head_size, quant_block)
    weight = weight_dtype_name(args["rms_norm_weight"])
    store_spec = kernel_spec("c128a_store", head_size, quant_block, weight)
    values = row_values(args["token_to_req_indices"], args["positions"], args["slot_mapping"],
                        args["kv_slot_mapping"])
    T = int(values["num_rows"])
    values |= ring_state_values(pool_spec, args["state_cache"], args["block_table"], args["block_size"])
    values |= ring_input_values(pool_spec, args["kv"], args["score"], args["ape"], args["query_start_loc"], T)
    values |= store_values(store_spec, args["rms_norm_weight"], args["rms_norm_eps"], args["cos_sin_cache"],
                           args["k_cache"], args["kv_cache_block_size"])
    nonempty(T, _tensors(args))
    if check_bounds_enabled():  # the ring has no checked build: its index values are checked here
        from compressc.runtime.bounds import check_bounds

        check_bounds(pool_spec, args, T)
    if args["compressed_kv"] is not None:
        values |= compressed_values(pool_spec, args["compressed_kv"], T)
    device = check_device(_tensors(args))
    if T == 0:
        return None
    if args["compressed_kv"] is None:
        values |= compressed_values(pool_spec, scratch_buffer(device, T, head_size), T)
    return values, device, (pool_spec, store_spec)


def save_ring_tail(
    state_cache: torch.Tensor,
    kv: torch.Tensor,
    score: torch.Tensor,
    ape: torch.Tensor,
    positions: torch.Tensor,
    tail_slot_mapping: torch.Tensor,
    block_size: int,
    *,
    head_size: int = 512,
) -> None:
    """Ring row tail_slot_mapping[t] = [kv[t] | score[t] + ape[p mod 128]] where the slot is >= 0.

    Torch ops on the tensors' device, no host synchronisation (capture-safe): the rows with
    slot -1 rewrite ring row 0 with the value it ends up holding, so one scatter does it.
    """
    spec = ring_spec(head_size, 64)
    tail = _index_1d("tail_slot_mapping", tail_slot_mapping, torch.int64)
    T = tail.numel()
    pos = _index_1d("positions", positions, torch.int64)
    if pos.numel() < T:
        raise _invalid("positions", f"have at least T = tail_slot_mapping.numel() = {T} entries", pos.numel())
    state = ring_state_values(spec, state_cache, torch.zeros((1, 1), dtype=torch.int32), block_size)
    ring_input_values(spec, kv, score, ape, torch.zeros(2, dtype=torch.int32), T)
    tensors = {"state_cache": state_cache, "kv": kv, "score": score, "ape": ape, "positions": pos,
               "tail_slot_mapping": tail}
    (_, device), *rest = ((n, t.device) for n, t in tensors.items())
    for name, other in rest:
        if other != device:
            raise _invalid(name, f"be on the same device as state_cache ({device})", other)
    if T:
        _scatter_tail(state_cache, kv, score, ape, pos[:T], tail, int(state["ring_capacity"]))


def _scatter_tail(state, kv, score, ape, pos, tail, capacity: int) -> None:
    from compressc.reference_ring import ring_rows

    ring = state if state.shape[1] == capacity else state.view(-1, capacity, state.shape[2])
    valid = tail >= 0
    slot = torch.where(valid, tail, 0)
    rows = ring_rows(kv[: tail.numel()], score[: tail.numel()], ape, pos)
    writes0 = valid & (slot == 0)
    # index_select, not rows[tensor]: a 0-d index tensor would be read back to the host
    first = rows.index_select(0, writes0.int().argmax().reshape(1))[0]
    final0 = torch.where(writes0.any(), first, ring[0, 0])
    ring[slot // capacity, slot % capacity] = torch.where(valid[:, None], rows, final0)
