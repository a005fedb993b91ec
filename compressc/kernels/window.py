"""The emitter of the smem-staged window's copies (`kd.stage_issue`). The window in registers
is emitted from its kd ops (compressc/kernels/row_ops_window.py); every fact printed here is
an attribute of the op.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels.source import Source

# kd.stage_issue's row: where the pipeline stands, and the guard that there is such a row
_ISSUE_GUARD = {"first": "if rem != 0:", "next": "if more:"}
# (row, slot) -> the slot's index: the first row's slot, or this row's `stg` plus `slot` of 2
_SLOT = {("first", 0): "0", ("first", 1): "1", ("next", 0): "stg", ("next", 1): "1 - stg"}


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def stage_issue(src: Source, module: Module, op: Op) -> None:
    """cp.async the window of the block's next active row into an smem slot, one commit group."""
    src.line(_ISSUE_GUARD[str(op.attr("row"))])
    with src.indent():
        _stage_pages(src, op)
        slot = _SLOT[str(op.attr("row")), _a(op, "slot")]
        src.line(f"s_dst = stage_base + ({slot}) * {_a(op, 'slot_bytes')} + tidx * 16")
        src.line(f"for r in range_constexpr({_a(op, 'window')}):")
        with src.indent():
            _stage_copies(src, op)
        src.line("ops.cp_async_commit()")


def _stage_pages(src: Source, op: Op) -> None:
    """The row's metadata and lane i's page of window row i."""
    window = _a(op, "window")
    src.line("srow = blk0 + ops.lowest_bit(rem)")
    src.line("s_s0 = cute.make_tensor(positions, cute.make_layout(num_positions))[srow] - " + str(window - 1))
    src.line("s_req = cute.make_tensor(token_to_req_indices, cute.make_layout(num_rows))[srow]")
    src.line("s_bt = cute.make_tensor(block_table + s_req * block_table_stride, "
             "cute.make_layout(block_table_stride))")
    src.line("s_wq = s_s0 + lane")
    if op.attr("absent"):
        src.line("s_wq = s_wq if s_wq >= 0 else Int64(0)")
    src.line("s_page = Int32(0)")
    src.line(f"if lane < {window}:")
    src.line("    s_page = s_bt[Int32(s_wq >> state_block_shift)]")


def _stage_copies(src: Source, op: Op) -> None:
    """Row r: `copies` 16-byte copies per stream (kv, then score) of the lane's channels."""
    width, copies, threads = _a(op, "width"), _a(op, "copies"), _a(op, "threads")
    src.line("q = s_s0 + r")
    if op.attr("absent"):
        src.line("q = q if q >= 0 else Int64(0)  # absent rows copy a harmless row, masked when pooled")
    stream = "0" if _a(op, "streams") == 1 else f"(r // {_a(op, 'ratio')}) * {_a(op, 'head')}"
    src.line("page = Int64(ops.shfl_idx(s_page, Int32(r)))")
    src.line(f"s_src = state_cache.toint() + (page * state_page_stride + (q & in_page) * {2 * width} "
             f"+ {stream} + col) * 4")
    for f, offset in ((0, 0), (1, width)):
        for h in range(copies):
            src.line(f"ops.cp_async_16(s_dst + (r * {2 * copies} + {f * copies + h}) * {16 * threads}, "
                     f"s_src + {(offset + 4 * h) * 4})")
