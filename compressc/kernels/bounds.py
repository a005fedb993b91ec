"""The emitter of a checked build's guard extension (docs/kernels.md §3, "Checked builds").

After the guard has found a row active, each check its op (a kd.guard, kd.ballot or kd.sweeps
whose `checks` lower-grid copied from the spec's `cc.bounds`) names tests one index the row is
about to use against the extent the runtime passed (`bounds_*` parameters), in the host
mode's order; the first that fails makes the row inactive (so nothing is read or written
for it) and is recorded with `ops.record_bounds_error`. The emitter prints what the op says;
which checks a kernel has is decided by `compressc.ir.from_spec.bounds_checks`.
"""

from __future__ import annotations

from compressc.ir.core import Op
from compressc.kernels.source import Source
from compressc.specs.abi import BOUNDS_CODES as CODES


def bounds(src: Source, op: Op) -> None:
    checks = str(op.attr("checks")).split(",")
    src.line("# cc.bounds: the indices this row uses, checked before any is used; a bad row is skipped")
    src.line("if active:")
    with src.indent():
        for name in ("bad_value", "bad_at", "bad_limit", "bad_aux"):
            src.line(f"{name} = Int64(0)")
        src.line("bad = Int32(0)")
        if "request" in checks:
            _state_checks(src, op)
        if "rope" in checks:
            _rope_check(src, op)
        if "kv" in checks:
            _kv_check(src)
        src.line("if bad != 0:")
        with src.indent():
            src.line("active = cutlass.Boolean(False)")
            src.line("ops.record_bounds_error(bounds_error.toint(), bad, Int64(row), bad_value, bad_at, "
                     "bad_limit, bad_aux)")


def _fail(src: Source, check: str, value: str, at: str, limit: str, aux: str = "0") -> None:
    src.line(f"bad = Int32({CODES[check]})  # {check}")
    src.line(f"bad_value = Int64({value})")
    src.line(f"bad_at = Int64({at})")
    src.line(f"bad_limit = Int64({limit})")
    src.line(f"bad_aux = Int64({aux})")


def _state_checks(src: Source, op: Op) -> None:
    """The request's block_table row, the columns the window spans, and their pages."""
    window = int(op.attr("window"))  # type: ignore[arg-type]
    src.line("if req >= bounds_table_rows:")
    with src.indent():
        _fail(src, "request", "req", "req", "bounds_table_rows")
    src.line("else:")
    with src.indent():
        src.line(f"q_lo = pos - {window - 1}")
        if op.attr("absent"):
            src.line("q_lo = q_lo if q_lo >= 0 else Int64(0)  # absent rows read column 0's page")
        src.line("c_hi = pos >> state_block_shift")
        src.line("if c_hi >= bounds_table_cols:")
        with src.indent():
            _fail(src, "column", "pos", "c_hi", "bounds_table_cols")
        src.line("else:")
        with src.indent():
            src.line("bRow = cute.make_tensor(block_table + req * block_table_stride, "
                     "cute.make_layout(bounds_table_cols))")
            src.line("for c in cutlass.range(Int32(q_lo >> state_block_shift), Int32(c_hi) + 1, unroll=1):")
            with src.indent():
                src.line("page = bRow[c]")
                src.line("if (page < 0) | (page >= bounds_state_pages):")
                with src.indent():
                    src.line("if bad == 0:")
                    with src.indent():
                        _fail(src, "page", "page", "c", "bounds_state_pages", "req")


def _rope_check(src: Source, op: Op) -> None:
    ratio = int(op.attr("ratio"))  # type: ignore[arg-type]
    src.line(f"need = (pos // {ratio}) * {ratio}  # the cos/sin row the rope reads")
    src.line("if bad == 0:")
    with src.indent():
        src.line("if need >= bounds_cos_sin_rows:")
        with src.indent():
            _fail(src, "rope", "pos", "need", "bounds_cos_sin_rows")


def _kv_check(src: Source) -> None:
    src.line("kv_page = kv_slot >> kv_block_shift  # the k_cache page the store writes")
    src.line("if bad == 0:")
    with src.indent():
        src.line("if kv_page >= bounds_kv_pages:")
        with src.indent():
            _fail(src, "kv", "kv_slot", "kv_page", "bounds_kv_pages")
