"""The emitters of the window gather, the online softmax and the pooling merges.

One batch of rows is loaded before its softmax update; split groups of a CTA meet in
shared memory in group order, the CTAs of a cluster in rank 0's shared memory over DSMEM.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.ring import window_source
from compressc.ir.schedule import Schedule
from compressc.kernels import ring
from compressc.kernels.source import Source
from compressc.kernels.stages_store import cache_hinted


def _i(op: Op, key: str, sched: bool = True) -> int:
    return int(op.get(key) if sched else op.attr(key))  # type: ignore[arg-type]



def _stage_chunks(module: Module, op: Op) -> tuple[int, int, int]:
    """(16-byte copies per stream and row of a lane, copies per row of a lane, bytes per slot)."""
    sched = Schedule.of(module)
    elems, threads = sched.elems, sched.threads
    per_stream = elems // 4
    rows = _i(op, "rows_in_flight")
    return per_stream, 2 * per_stream, rows * 2 * per_stream * 16 * threads


def stage_issue(src: Source, module: Module, op: Op, which: str, slot: str) -> None:
    """cp.async the window of the block's row `which` into smem slot `slot`, one commit group."""
    window, ratio, head = _i(op, "window", False), _i(op, "ratio", False), _i(op, "head", False)
    width, threads = _i(op, "state_width", False), Schedule.of(module).threads
    per_stream, per_row, slot_bytes = _stage_chunks(module, op)
    src.line(f"srow = blk0 + {which}")
    src.line("s_s0 = cute.make_tensor(positions, cute.make_layout(num_positions))[srow] - " + str(window - 1))
    src.line("s_req = cute.make_tensor(token_to_req_indices, cute.make_layout(num_rows))[srow]")
    src.line("s_bt = cute.make_tensor(block_table + s_req * block_table_stride, "
             "cute.make_layout(block_table_stride))")
    src.line("s_wq = s_s0 + lane")
    if window > ratio:
        src.line("s_wq = s_wq if s_wq >= 0 else Int64(0)")
    src.line("s_page = Int32(0)")
    src.line(f"if lane < {window}:")
    src.line("    s_page = s_bt[Int32(s_wq >> state_block_shift)]")
    src.line(f"s_dst = stage_base + ({slot}) * {slot_bytes} + tidx * 16")
    src.line(f"for r in range_constexpr({window}):")
    with src.indent():
        src.line("q = s_s0 + r")
        if window > ratio:
            src.line("q = q if q >= 0 else Int64(0)  # absent rows copy a harmless row, masked when pooled")
        stream = "0" if ratio == window else f"(r // {ratio}) * {head}"
        src.line("page = Int64(ops.shfl_idx(s_page, Int32(r)))")
        src.line(f"s_src = state_cache.toint() + (page * state_page_stride + (q & in_page) * {2 * width} "
                 f"+ {stream} + col) * 4")
        for f, offset in ((0, 0), (1, width)):
            for h in range(per_stream):
                src.line(f"ops.cp_async_16(s_dst + (r * {per_row} + {f * per_stream + h}) * {16 * threads}, "
                         f"s_src + {(offset + 4 * h) * 4})")
    src.line("ops.cp_async_commit()")


def window(src: Source, module: Module, op: Op) -> None:
    """Gather + online softmax: all loads of a batch of rows first, then the updates.

    One batch of `rows_in_flight` rows is unrolled; more batches run as a real loop
    so the compiler cannot hoist every load of a 128-row window into registers.
    """
    sched = Schedule.of(module)
    elems, split = sched.elems, sched.split
    window, rows, cluster = _i(op, "window", False), _i(op, "rows_in_flight"), Schedule.of(module).cluster
    per_group = window // split // cluster
    chunks = per_group // rows
    src.line(f"s0 = pos - {window - 1}")
    if op.get("stage") == "smem":
        _window_from_smem(src, module, op)
        return
    setup, _ = _source(module, op)
    setup(src, module, op)
    for name, init in (("rM", 'Float32(-float("inf"))'), ("rL", "Float32(0.0)"), ("rA", "Float32(0.0)")):
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
        src.line(f"{name}.fill({init})")
    parts = [f"rank * {window // cluster}"] if cluster > 1 else []
    parts += [f"group * {per_group}"] if split > 1 else []
    first = " + ".join(parts) or "0"
    if op.get("page_lookup") == "lane":
        _lane_pages(src, module, op, first, per_group)
    if chunks > 1:
        src.line(f"for chunk in cutlass.range({chunks}, unroll=1):")
        with src.indent():
            src.line(f"i0 = {first} + chunk * {rows}")
            if op.get("page_lookup") == "lane":
                src.line(f"k0 = chunk * {rows}")
            _window_batch(src, module, op)
    else:
        src.line(f"i0 = {first}")
        if op.get("page_lookup") == "lane":
            src.line("k0 = 0")
        _window_batch(src, module, op)


def _lane_pages(src: Source, module: Module, op: Op, first: str, per_group: int) -> None:
    """Lane i looks up the page of its group's row i; the batches shuffle it from that lane."""
    absent = _i(op, "window", False) > _i(op, "ratio", False)
    src.line(f"# lane i looks up the page of its group's window row i (one round trip for all "
             f"{per_group});")
    src.line("# each batch takes a row's page from that lane with a shuffle")
    src.line(f"wq = s0 + {first} + lane")
    if absent:
        src.line("wq = wq if wq >= 0 else Int64(0)")
    src.line("wpage = Int32(0)")
    src.line(f"if lane < {per_group}:")
    src.line("    wpage = mBT[Int32(wq >> state_block_shift)]")
    if op.get("l2_prefetch"):
        _l2_prefetch(src, module, op, per_group)


def _l2_prefetch(src: Source, module: Module, op: Op, per_group: int) -> None:
    """The group's first warp: a lane that starts a page's run of the group's rows prefetches
    the run into L2 with one bulk copy (rows of a page are contiguous)."""
    row_bytes = 2 * _i(op, "state_width", False) * 4
    src.line("# every page's DRAM trip starts now: the lane at the start of a page's run of this")
    src.line("# group's rows prefetches the whole run into L2 (one bulk copy); the batches hit L2")
    src.line(f"if hlane < {per_group}:")
    with src.indent():
        src.line("at = wq & in_page")
        src.line("if (at == 0) | (lane == 0):")
        with src.indent():
            src.line("run = (in_page + 1) - at")
            src.line(f"if run > {per_group} - lane:")
            src.line(f"    run = Int64({per_group} - lane)")
            src.line(f"ops.prefetch_l2_bulk(state_cache.toint() + (Int64(wpage) * state_page_stride + "
                     f"at * {row_bytes // 4}) * 4, Int32(run) * {row_bytes})")


def _window_from_smem(src: Source, module: Module, op: Op) -> None:
    """The online softmax over the rows this lane copied into its smem slot `stg`."""
    sched = Schedule.of(module)
    elems, threads = sched.elems, sched.threads
    window, ratio = _i(op, "window", False), _i(op, "ratio", False)
    per_stream, per_row, slot_bytes = _stage_chunks(module, op)
    for name, init in (("rM", 'Float32(-float("inf"))'), ("rL", "Float32(0.0)"), ("rA", "Float32(0.0)")):
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
        src.line(f"{name}.fill({init})")
    src.line(f"s_at = stg * {slot_bytes // 4} + tidx * 4  # this lane's first fp32 in its smem slot")
    src.line(f"for r in range_constexpr({window}):")
    with src.indent():
        src.line(f"rKV = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
        src.line(f"rSC = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
        src.line("r4 = cute.make_rmem_tensor(cute.make_layout(4), Float32)")
        for f, frag in ((0, "rKV"), (1, "rSC")):
            for h in range(per_stream):
                at = f"s_at + (r * {per_row} + {f * per_stream + h}) * {4 * threads}"
                src.line(f"cute.autovec_copy(cute.make_tensor(sStage + cute.assume({at}, divby=4), "
                         "cute.make_layout(4)), r4)")
                for c in range(4):
                    src.line(f"{frag}[{4 * h + c}] = r4[{c}]")
        if window > ratio:
            src.line("if s0 + r >= 0:")
            with src.indent():
                _online_update(src, elems, "rSC[e]", "rKV[e]")
        else:
            _online_update(src, elems, "rSC[e]", "rKV[e]")


def _window_batch(src: Source, module: Module, op: Op) -> None:
    """Rows i0 .. i0 + rows_in_flight - 1: their loads, then their updates."""
    elems = Schedule.of(module).elems
    window, ratio = _i(op, "window", False), _i(op, "ratio", False)
    rows, vec = _i(op, "rows_in_flight"), _i(op, "vector_bits") // 32
    absent = window > ratio  # only an overlapping window can start before position 0
    src.line(f"# {2 * rows * elems // vec} loads of {vec * 32} bits in flight per lane before the "
             "first update")
    src.line(f"rKV = cute.make_rmem_tensor(cute.make_layout(({elems}, {rows})), Float32)")
    src.line(f"rSC = cute.make_rmem_tensor(cute.make_layout(({elems}, {rows})), Float32)")
    _, row_loads = _source(module, op)
    src.line(f"for r in range_constexpr({rows}):")
    with src.indent():
        row_loads(src, module, op)
    if op.get("rescale") == "batch":
        _batch_update(src, elems, rows, absent)
        return
    src.line(f"for r in range_constexpr({rows}):")
    with src.indent():
        if absent:
            src.line("if s0 + i0 + r >= 0:")
            with src.indent():
                _online_update(src, elems, "rSC[e, r]", "rKV[e, r]")
        else:
            _online_update(src, elems, "rSC[e, r]", "rKV[e, r]")


def _paged_setup(src: Source, module: Module, op: Op) -> None:
    src.line("mBT = cute.make_tensor(block_table + req * block_table_stride, "
             "cute.make_layout(block_table_stride))")
    src.line("in_page = (Int64(1) << state_block_shift) - 1")


def _paged_row(src: Source, module: Module, op: Op) -> None:
    """Window row i0 + r of the paged state into rKV[:, r], rSC[:, r] (docs/kernels.md §3.2)."""
    elems = Schedule.of(module).elems
    window, ratio, head = _i(op, "window", False), _i(op, "ratio", False), _i(op, "head", False)
    width, vec = _i(op, "state_width", False), _i(op, "vector_bits") // 32
    src.line("q = s0 + i0 + r")
    if window > ratio:
        src.line("q = q if q >= 0 else Int64(0)  # absent rows load a harmless row, masked below")
    stream = "0" if ratio == window else f"((i0 + r) // {ratio}) * {head}"
    if op.get("page_lookup") == "lane":
        src.line("page = Int64(ops.shfl_idx(wpage, Int32(k0 + r)))  # row k0 + r of this group")
    else:
        src.line("page = Int64(mBT[Int32(q >> state_block_shift)])  # page size is a power of two")
    src.line(f"base = page * state_page_stride + (q & in_page) * {2 * width} + {stream} + col")
    for frag, offset in (("rKV", ""), ("rSC", f" + {width}")):
        if cache_hinted(module):
            _stream_loads(src, frag, f"base{offset}", elems, vec)
            continue
        src.line("cute.autovec_copy(cute.make_tensor(state_cache + "
                 f"cute.assume(base{offset}, divby={vec}), "
                 f"cute.make_layout({elems})), {frag}[None, r])")


# where a window's rows come from, by the op that defines its state operand (a kernel
# argument: the paged state): (per-window setup, one row's loads)
_SOURCES = {"cc.ring_state": (ring.window_setup, ring.row_loads)}


def _source(module: Module, op: Op):
    source = window_source(module, op)
    return _SOURCES[source.name] if source is not None else (_paged_setup, _paged_row)


def _stream_loads(src: Source, frag: str, at: str, elems: int, vec: int) -> None:
    """`frag[:, r]` from state_cache[at ..], `vec` fp32 a load, read-once hints (cache-hints)."""
    names = ", ".join(f"v{c}" for c in range(vec))
    for h in range(elems // vec):
        offset = f" + {h * vec}" if h else ""
        src.line(f"{names}, = ops.ld_stream(state_cache.toint() + ({at}{offset}) * 4, {vec})")
        for c in range(vec):
            src.line(f"{frag}[{h * vec + c}, r] = v{c}")


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
                src.line("    m_new = ops.fmax(m_new, rSC[e, r])")
            else:
                src.line("m_new = ops.fmax(m_new, rSC[e, r])")
        if absent:
            # no present row yet (C4 sequence start): nothing to add, and (-inf) - (-inf) is NaN
            src.line('if m_new > Float32(-float("inf")):')
            src.depth += 1
        src.line("alpha = ops.ex2((rM[e] - m_new) * LOG2E)")
        src.line("rL[e] = rL[e] * alpha")
        src.line("rA[e] = rA[e] * alpha")
        src.line(f"for r in range_constexpr({rows}):")
        with src.indent():
            if absent:
                src.line("if s0 + i0 + r >= 0:")
                src.depth += 1
            src.line("p = ops.ex2((rSC[e, r] - m_new) * LOG2E)")
            src.line("rL[e] = rL[e] + p")
            src.line("rA[e] = rA[e] + p * rKV[e, r]")
            if absent:
                src.depth -= 1
        src.line("rM[e] = m_new")
        if absent:
            src.depth -= 1


def _online_update(src: Source, elems: int, score: str, value: str) -> None:
    src.line(f"for e in range_constexpr({elems}):")
    with src.indent():
        src.line(f"m_new = ops.fmax(rM[e], {score})")
        src.line("alpha = ops.ex2((rM[e] - m_new) * LOG2E)")
        src.line(f"p = ops.ex2(({score} - m_new) * LOG2E)")
        src.line("rL[e] = rL[e] * alpha + p")
        src.line(f"rA[e] = rA[e] * alpha + p * {value}")
        src.line("rM[e] = m_new")


def pool(src: Source, module: Module, op: Op) -> None:
    """The pooled value x = a / l. Only the online merge kernel's pool reaches here: every module
    with a cc.window has its merge of split groups and ranks lowered to kd ops (lower-row,
    kernels/row_ops_pool.py), and the verifier refuses a split or a cluster without one."""
    elems = Schedule.of(module).elems
    src.line(f"rX = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line(f"for e in range_constexpr({elems}):")
    src.line("    rX[e] = rA[e] / rL[e]  # IEEE division, as the reference")
