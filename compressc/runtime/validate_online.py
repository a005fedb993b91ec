"""Argument checks of the online C128 merge (docs/kernels.md §9.1), runnable on CPU tensors.

Like `validate`, each check names the argument, what was expected and what was given, reads only
metadata (no device synchronisation) and returns the kernel ABI values. The segment table's values
are device data: `check_segment_bounds` reads them, only when COMPRESSC_CHECK_BOUNDS asks for it.
"""

from __future__ import annotations

import torch

from compressc.runtime.validate import Values, _aligned, _invalid, _tensor
from compressc.specs.family import KernelSpec

SEGMENT_COLUMNS = 5
STATE_ROW_ALIGN = 16  # run_state rows: fp32 elements (64 bytes), docs/kernels.md §9.1


def _rows_2d(name: str, value: object, width: int, row_align: int, need: str) -> torch.Tensor:
    """An fp32 [rows, width] tensor with unit column stride and a row stride a multiple of
    `row_align` elements, 16-byte aligned (every lane reads it with 128-bit vectors)."""
    t = _tensor(name, value, torch.float32)
    if t.dim() != 2 or t.shape[1] != width:
        raise _invalid(name, f"have shape {need}", f"shape {tuple(t.shape)}")
    if t.stride(1) != 1 or t.stride(0) % row_align or t.stride(0) < width:
        expected = f"have contiguous rows (stride(1) == 1) and a row stride that is a multiple of {row_align}"
        raise _invalid(name, expected, f"strides {t.stride()}")
    _aligned(name, t)
    return t


def online_values(spec: KernelSpec, kv: object, score: object, ape: object, positions: object,
                  run_state: object, segments: object, compressed_kv: object, *,
                  table_name: str = "segments") -> Values:
    """The ABI values of one merge launch; T = kv.shape[0] token rows. `table_name`: what the
    caller calls `segments` (its errors name it)."""
    head = spec.head
    kv_t = _rows_2d("kv", kv, head, 4, f"[T, {head}]")
    T = kv_t.shape[0]
    same_t = f"[T, {head}] with T = kv.shape[0] = {T}"
    score_t = _rows_2d("score", score, head, 4, same_t)
    if score_t.shape[0] != T:
        raise _invalid("score", f"have shape {same_t}", f"shape {tuple(score_t.shape)}")
    ape_t = _tensor("ape", ape, torch.float32)
    if ape_t.shape != (spec.ratio, head) or not ape_t.is_contiguous():
        raise _invalid("ape", f"be a contiguous [{spec.ratio}, {head}] tensor",
                       f"shape {tuple(ape_t.shape)}, strides {ape_t.stride()}")
    pos = _positions(positions, T)
    state = _rows_2d("run_state", run_state, 3 * head, STATE_ROW_ALIGN, f"[max_num_reqs, {3 * head}]")
    table = _segments(table_name, segments)
    out = _compressed(compressed_kv, T, head)
    return {
        "kv": kv_t.data_ptr(), "score": score_t.data_ptr(), "ape": _aligned("ape", ape_t),
        "positions": pos.data_ptr(), "run_state": state.data_ptr(), "segments": table.data_ptr(),
        "compressed_kv": out.data_ptr(), "num_rows": table.shape[0], "kv_stride": kv_t.stride(0),
        "score_stride": score_t.stride(0), "run_state_stride": state.stride(0),
    }


def _positions(positions: object, T: int) -> torch.Tensor:
    pos = _tensor("positions", positions, torch.int64)
    if pos.dim() != 1 or pos.numel() < T or (pos.stride(0) != 1 and pos.numel() > 1):
        raise _invalid("positions", f"be a contiguous 1-D tensor of at least T = kv.shape[0] = {T} entries",
                       f"shape {tuple(pos.shape)}, strides {pos.stride()}")
    return pos


def _segments(name: str, segments: object) -> torch.Tensor:
    table = _tensor(name, segments, torch.int32)
    if table.dim() != 2 or table.shape[1] != SEGMENT_COLUMNS or not table.is_contiguous():
        expected = ("be a contiguous [n, 5] tensor of (row_base, num_rows, read_row, emit_token, write_row) "
                    "(compressc.online.plan_online_c128_segments makes them)")
        raise _invalid(name, expected, f"shape {tuple(table.shape)}, strides {table.stride()}")
    return table


def _compressed(compressed_kv: object, T: int, head: int) -> torch.Tensor:
    out = _tensor("compressed_kv", compressed_kv, torch.float32)
    if out.dim() != 2 or out.shape[0] < T or out.shape[1] != head or not out.is_contiguous():
        raise _invalid("compressed_kv", f"be a contiguous [>= T, {head}] = [>= {T}, {head}] tensor",
                       f"shape {tuple(out.shape)}, strides {out.stride()}")
    _aligned("compressed_kv", out)
    return out


def check_segment_bounds(segments: torch.Tensor, T: int, state_rows: int) -> None:
    """Every segment's rows inside [0, T), its emit row too, its state rows inside run_state
    (reads the table: a device synchronisation; COMPRESSC_CHECK_BOUNDS only)."""
    for i, (base, rows, read, emit, write) in enumerate(segments.tolist()):
        problems = []
        if rows < 0 or base < 0 or base + rows > T:
            problems.append(f"rows [{base}, {base + rows}) outside the T = {T} token rows")
        if emit >= T or emit < -1 or read >= state_rows or write >= state_rows or min(read, write) < -1:
            problems.append(f"emit_token {emit} (T = {T}) or read/write rows {read}, {write} "
                            f"(run_state has {state_rows})")
        if problems:
            raise ValueError(f"segments[{i}] = {(base, rows, read, emit, write)}: " + "; ".join(problems))
