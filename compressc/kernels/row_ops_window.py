"""The emitter of the window's kd ops (compressc/passes/lower_row_window.py): one small function
per op, printing its attributes; lower-row chose the source, the page lookups, the batches,
the vector width, the cache hint and the rescale."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels import ring
from compressc.kernels.source import Source

_SOFTMAX = (("rM", 'Float32(-float("inf"))'), ("rL", "Float32(0.0)"), ("rA", "Float32(0.0)"))


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def window_start(src: Source, module: Module, op: Op) -> None:
    src.line(f"s0 = pos - {_a(op, 'window') - 1}")


def page_table(src: Source, module: Module, op: Op) -> None:
    src.line("mBT = cute.make_tensor(block_table + req * block_table_stride, "
             "cute.make_layout(block_table_stride))")
    src.line("in_page = (Int64(1) << state_block_shift) - 1")


def ring_rows(src: Source, module: Module, op: Op) -> None:
    src.line("# the ring's rows: found once per row by cc.ring_state (no page table)")


def softmax_init(src: Source, module: Module, op: Op) -> None:
    for name, init in _SOFTMAX:
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout({_a(op, 'elems')}), Float32)")
        src.line(f"{name}.fill({init})")


def first_row(op: Op) -> str:
    """The lane's first window row: its rank's and its group's part (`rows` rows a group)."""
    rows, groups = _a(op, "rows"), _a(op, "groups")
    parts = [f"rank * {rows * groups}"] if _a(op, "ranks") > 1 else []
    parts += [f"group * {rows}"] if groups > 1 else []
    return " + ".join(parts) or "0"


def lane_pages(src: Source, module: Module, op: Op) -> None:
    """Lane i looks up the page of its group's row i; the batches shuffle it from that lane."""
    rows = _a(op, "rows")
    src.line(f"# lane i looks up the page of its group's window row i (one round trip for all {rows});")
    src.line("# each batch takes a row's page from that lane with a shuffle")
    src.line(f"wq = s0 + {first_row(op)} + lane")
    if op.attr("absent"):
        src.line("wq = wq if wq >= 0 else Int64(0)")
    src.line("wpage = Int32(0)")
    src.line(f"if lane < {rows}:")
    src.line("    wpage = mBT[Int32(wq >> state_block_shift)]")


def l2_prefetch(src: Source, module: Module, op: Op) -> None:
    """The lane at the start of a page's run of the group's rows prefetches the run into L2."""
    rows = _a(op, "rows")
    src.line("# every page's DRAM trip starts now: the lane at the start of a page's run of this")
    src.line("# group's rows prefetches the whole run into L2 (one bulk copy); the batches hit L2")
    src.line(f"if hlane < {rows}:")
    with src.indent():
        src.line("at = wq & in_page")
        src.line("if (at == 0) | (lane == 0):")
        with src.indent():
            src.line("run = (in_page + 1) - at")
            src.line(f"if run > {rows} - lane:")
            src.line(f"    run = Int64({rows} - lane)")
            src.line(f"ops.prefetch_l2_bulk(state_cache.toint() + (Int64(wpage) * state_page_stride + "
                     f"at * {_a(op, 'row_bytes') // 4}) * 4, Int32(run) * {_a(op, 'row_bytes')})")


def window_chunks(src: Source, module: Module, op: Op) -> None:
    """The batches of the group's rows: one straight-line batch, or a real loop (so the compiler
    cannot hoist every load of a 128-row window into registers)."""
    chunks, batch, lane = _a(op, "chunks"), _a(op, "batch"), bool(op.attr("lane_pages"))
    if chunks == 1:
        src.line(f"i0 = {first_row(op)}")
        if lane:
            src.line("k0 = 0")
        return
    src.line(f"for chunk in cutlass.range({chunks}, unroll=1):")
    src.depth += 1
    src.line(f"i0 = {first_row(op)} + chunk * {batch}")
    if lane:
        src.line(f"k0 = chunk * {batch}")


def load_batch(src: Source, module: Module, op: Op) -> None:
    rows, elems, vec = _a(op, "rows"), _a(op, "elems"), _a(op, "vec")
    src.line(f"# {2 * rows * elems // vec} loads of {vec * 32} bits in flight per lane before the "
             "first update")
    src.line(f"rKV = cute.make_rmem_tensor(cute.make_layout(({elems}, {rows})), Float32)")
    src.line(f"rSC = cute.make_rmem_tensor(cute.make_layout(({elems}, {rows})), Float32)")
    src.line(f"for r in range_constexpr({rows}):")
    src.depth += 1


def paged_row(src: Source, module: Module, op: Op) -> None:
    """Window row i0 + r of the paged state into rKV[:, r], rSC[:, r] (docs/kernels.md §3.2)."""
    width = _a(op, "width")
    src.line("q = s0 + i0 + r")
    if op.attr("absent"):
        src.line("q = q if q >= 0 else Int64(0)  # absent rows load a harmless row, masked below")
    stream = "0" if _a(op, "streams") == 1 else f"((i0 + r) // {_a(op, 'ratio')}) * {_a(op, 'head')}"
    if op.attr("page") == "lane":
        src.line("page = Int64(ops.shfl_idx(wpage, Int32(k0 + r)))  # row k0 + r of this group")
    else:
        src.line("page = Int64(mBT[Int32(q >> state_block_shift)])  # page size is a power of two")
    src.line(f"base = page * state_page_stride + (q & in_page) * {2 * width} + {stream} + col")
    for frag, offset in (("rKV", ""), ("rSC", f" + {width}")):
        ring.load(src, "state_cache", f"base{offset}", frag, op)


def ring_row(src: Source, module: Module, op: Op) -> None:
    ring.row_loads(src, op)


def online_update(src: Source, module: Module, op: Op) -> None:
    """The batch's updates: one rescale per batch, or an update per row (present rows only)."""
    elems, rows, absent = _a(op, "elems"), _a(op, "rows"), bool(op.attr("absent"))
    if op.attr("rescale") == "batch":
        _batch_update(src, elems, rows, absent)
        return
    src.line(f"for r in range_constexpr({rows}):")
    with src.indent():
        if absent:
            src.line("if s0 + i0 + r >= 0:")
        with src.indent(int(absent)):
            _update(src, elems, "rSC[e, r]", "rKV[e, r]")


def smem_rows(src: Source, module: Module, op: Op) -> None:
    """Row r of the lane's smem slot `stg` (what it copied itself) into rKV, rSC."""
    elems, copies, threads = _a(op, "elems"), _a(op, "copies"), _a(op, "threads")
    src.line(f"s_at = stg * {_a(op, 'slot_words')} + tidx * 4  # this lane's first fp32 in its smem slot")
    src.line(f"for r in range_constexpr({_a(op, 'rows')}):")
    src.depth += 1
    src.line(f"rKV = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line(f"rSC = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line("r4 = cute.make_rmem_tensor(cute.make_layout(4), Float32)")
    for f, frag in ((0, "rKV"), (1, "rSC")):
        for h in range(copies):
            at = f"s_at + (r * {2 * copies} + {f * copies + h}) * {4 * threads}"
            src.line(f"cute.autovec_copy(cute.make_tensor(sStage + cute.assume({at}, divby=4), "
                     "cute.make_layout(4)), r4)")
            for c in range(4):
                src.line(f"{frag}[{4 * h + c}] = r4[{c}]")


def online_row(src: Source, module: Module, op: Op) -> None:
    absent = bool(op.attr("absent"))
    if absent:
        src.line("if s0 + r >= 0:")
    with src.indent(int(absent)):
        _update(src, _a(op, "elems"), "rSC[e]", "rKV[e]")


def _update(src: Source, elems: int, score: str, value: str) -> None:
    src.line(f"for e in range_constexpr({elems}):")
    with src.indent():
        src.line(f"m_new = ops.fmax(rM[e], {score})")
        src.line("alpha = ops.ex2((rM[e] - m_new) * LOG2E)")
        src.line(f"p = ops.ex2(({score} - m_new) * LOG2E)")
        src.line("rL[e] = rL[e] * alpha + p")
        src.line(f"rA[e] = rA[e] * alpha + p * {value}")
        src.line("rM[e] = m_new")


def _batch_update(src: Source, elems: int, rows: int, absent: bool) -> None:
    """One online-softmax step per batch: the batch's max first, one rescale of (sum,
    weighted sum), then a term per row: 1 + rows ex2 per channel instead of 2 x rows."""
    src.line(f"# one rescale per batch: {rows + 1} ex2 per channel instead of {2 * rows}")
    src.line(f"for e in range_constexpr({elems}):")
    with src.indent():
        src.line("m_new = rM[e]")
        src.line(f"for r in range_constexpr({rows}):")
        with src.indent():
            if absent:
                src.line("if s0 + i0 + r >= 0:  # an absent row does not count")
            src.line(f"{'    ' if absent else ''}m_new = ops.fmax(m_new, rSC[e, r])")
        if absent:
            # no present row yet (C4 sequence start): nothing to add, and (-inf) - (-inf) is NaN
            src.line('if m_new > Float32(-float("inf")):')
        with src.indent(int(absent)):
            _rescale_and_add(src, rows, absent)


def _rescale_and_add(src: Source, rows: int, absent: bool) -> None:
    src.line("alpha = ops.ex2((rM[e] - m_new) * LOG2E)")
    src.line("rL[e] = rL[e] * alpha")
    src.line("rA[e] = rA[e] * alpha")
    src.line(f"for r in range_constexpr({rows}):")
    with src.indent():
        if absent:
            src.line("if s0 + i0 + r >= 0:")
        with src.indent(int(absent)):
            src.line("p = ops.ex2((rSC[e, r] - m_new) * LOG2E)")
            src.line("rL[e] = rL[e] + p")
            src.line("rA[e] = rA[e] + p * rKV[e, r]")
    src.line("rM[e] = m_new")


def end_loop(src: Source, module: Module, op: Op) -> None:
    """Closes kd.window_chunks, kd.load_batch or kd.smem_rows (the walker restores the depth)."""


WINDOW_EMIT = {
    "kd.window_start": window_start,
    "kd.page_table": page_table,
    "kd.ring_rows": ring_rows,
    "kd.softmax_init": softmax_init,
    "kd.lane_pages": lane_pages,
    "kd.l2_prefetch": l2_prefetch,
    "kd.window_chunks": window_chunks,
    "kd.load_batch": load_batch,
    "kd.paged_row": paged_row,
    "kd.ring_row": ring_row,
    "kd.online_update": online_update,
    "kd.smem_rows": smem_rows,
    "kd.online_row": online_row,
}
