"""The interpreter of a checked build's bounds checks (docs/kernels.md §3, "Checked builds"), the
`checks` of its guard ops (kd.guard, kd.ballot, kd.sweeps), as `compressc.kernels.bounds` emits them:
the checks in order on an active row, the first failure recorded (if the record is free) and
the row made inactive."""

from __future__ import annotations

from compressc.ir.core import Op
from compressc.ir.interp_stages import Memory
from compressc.specs.abi import BOUNDS_CODES as CODES


def bounds_failure(op: Op, mem: Memory, row: int, pos: int, req: int, kv_slot: int) -> tuple | None:
    """(check, value, at, limit, aux) of the row's first out-of-range index, or None."""
    checks = str(op.attr("checks")).split(",")
    failure = _state(op, mem, pos, req) if "request" in checks else None
    ratio = int(op.attr("ratio"))  # type: ignore[arg-type]
    need = pos // ratio * ratio
    if failure is None and "rope" in checks and need >= mem.scalar("bounds_cos_sin_rows"):
        failure = ("rope", pos, need, mem.scalar("bounds_cos_sin_rows"), 0)
    kv_page = kv_slot >> mem.scalar("kv_block_shift") if "kv" in checks else 0
    if failure is None and "kv" in checks and kv_page >= mem.scalar("bounds_kv_pages"):
        failure = ("kv", kv_slot, kv_page, mem.scalar("bounds_kv_pages"), 0)
    return failure


def _state(op: Op, mem: Memory, pos: int, req: int) -> tuple | None:
    rows, cols = mem.scalar("bounds_table_rows"), mem.scalar("bounds_table_cols")
    if req >= rows:
        return ("request", req, req, rows, 0)
    shift, window = mem.scalar("state_block_shift"), int(op.attr("window"))  # type: ignore[arg-type]
    q_lo = pos - (window - 1)
    c_lo, c_hi = (max(q_lo, 0) if op.attr("absent") else q_lo) >> shift, pos >> shift
    if c_hi >= cols:
        return ("column", pos, c_hi, cols, 0)
    pages, stride = mem.scalar("bounds_state_pages"), mem.scalar("block_table_stride")
    for c in range(c_lo, c_hi + 1):
        page = int(mem["block_table"][req * stride + c])
        if page < 0 or page >= pages:
            return ("page", page, c, pages, req)
    return None


def record(mem: Memory, row: int, failure: tuple) -> None:
    """ops.record_bounds_error: the first claim of the record wins (word 0: 1 | code << 32)."""
    rec = mem["bounds_error"]
    if int(rec[0]) & 0xFFFFFFFF:
        return
    check, value, at, limit, aux = failure
    rec[0] = 1 | (CODES[check] << 32)
    rec[1:6] = (row, value, at, limit, aux)
