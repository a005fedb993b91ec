"""Emitters of the online C128 merge (docs/kernels.md §9): the segment's metadata, the running
softmax over its token rows and the two stores. One function per op, no decisions: the batch
of rows in flight, the vector widths and the cache hints are the passes'.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.online import SEGMENT_FIELDS
from compressc.ir.schedule import Schedule
from compressc.kernels.loads import row_loads
from compressc.kernels.source import Source
from compressc.kernels.stages_store import cache_hinted, keep_arg, store_words

_SEG = ("seg_base", "seg_rows", "seg_read", "seg_emit", "seg_write")


def _i(op: Op, key: str, sched: bool = True) -> int:
    return int(op.get(key) if sched else op.attr(key))  # type: ignore[arg-type]


def segment(src: Source, module: Module, op: Op) -> None:
    """kd.segment: CTA `row` reads its segment's five int32 fields (one broadcast load each)."""
    src.line("# docs/kernels.md §9.1: this CTA's segment (row_base, num_rows, read_row, emit_token,")
    src.line("# write_row); -1 disables the read, the emit and the write")
    src.line(f"mSeg = cute.make_tensor(segments + Int64(row) * {len(SEGMENT_FIELDS)}, "
             f"cute.make_layout({len(SEGMENT_FIELDS)}))")
    for k, name in enumerate(_SEG):
        src.line(f"{name} = mSeg[{k}]")


def _view(ptr: str, at: str, elems: int, vec: int) -> str:
    return f"cute.make_tensor({ptr} + cute.assume({at}, divby={vec}), cute.make_layout({elems}))"


def merge(src: Source, module: Module, op: Op) -> None:
    """cc.online_merge: seed (m, l, a), then the segment's rows in batches of rows_in_flight."""
    elems, head = Schedule.of(module).elems, _i(op, "head", False)
    rows, vec = _i(op, "rows_in_flight"), _i(op, "vector_bits") // 32
    for name, init in (("rM", 'Float32(-float("inf"))'), ("rL", "Float32(0.0)"), ("rA", "Float32(0.0)")):
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
        src.line(f"{name}.fill({init})")
    src.line("if seg_read >= 0:")
    with src.indent():
        src.line("# seeded from the request's committed running state: max | sum | weighted sum")
        src.line("st_at = Int64(seg_read) * run_state_stride + col")
        for k, name in enumerate(("rM", "rL", "rA")):
            at = f"st_at + {k * head}" if k else "st_at"
            src.line(f"cute.autovec_copy({_view('run_state', at, elems, vec)}, {name})")
    src.line(f"for chunk in cutlass.range((seg_rows + {rows - 1}) // {rows}, unroll=1):")
    with src.indent():
        src.line(f"k0 = chunk * {rows}")
        _batch_loads(src, module, op, elems, rows, vec)
        _batch_updates(src, elems, rows)


def _batch_loads(src: Source, module: Module, op: Op, elems: int, rows: int, vec: int) -> None:
    """Every load of the batch before its first update; a tail row past the segment loads its
    last row again (in bounds) and is not counted."""
    ratio, head = _i(op, "ratio", False), _i(op, "head", False)
    loads = 3 * rows * elems // vec
    src.line(f"# {loads} loads of {vec * 32} bits in flight per lane before the first update")
    for name in ("rKV", "rSC", "rAP"):
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout(({elems}, {rows})), Float32)")
    src.line(f"for r in range_constexpr({rows}):")
    with src.indent():
        src.line("k = k0 + r")
        src.line("k = k if k < seg_rows else seg_rows - 1")
        src.line("t = Int64(seg_base + k)")
        src.line("p = cute.make_tensor(positions + t, cute.make_layout(1))[0]")
        src.line(f"ape_at = (p & {ratio - 1}) * {head} + col  # ape[p mod {ratio}]")
        for frag, ptr, stride in (("rKV", "kv", "kv_stride"), ("rSC", "score", "score_stride")):
            row_loads(src, ptr, f"t * {stride} + col", frag, elems, vec, cache_hinted(module))
        src.line(f"cute.autovec_copy({_view('ape', 'ape_at', elems, vec)}, rAP[None, r])")


def _batch_updates(src: Source, elems: int, rows: int) -> None:
    """docs/kernels.md §9.3, row by row in order: s = score + ape; m' = max(m, s);
    alpha = ex2((m - m') log2e), beta = ex2((s - m') log2e); l = l alpha + beta; a = a alpha + kv beta."""
    src.line(f"for r in range_constexpr({rows}):")
    with src.indent():
        src.line("if k0 + r < seg_rows:")
        with src.indent():
            src.line(f"for e in range_constexpr({elems}):")
            with src.indent():
                src.line("s = rSC[e, r] + rAP[e, r]")
                src.line("m_new = ops.fmax(rM[e], s)")
                src.line("alpha = ops.ex2((rM[e] - m_new) * LOG2E)")
                src.line("beta = ops.ex2((s - m_new) * LOG2E)")
                src.line("rL[e] = rL[e] * alpha + beta")
                src.line("rA[e] = rA[e] * alpha + rKV[e, r] * beta")
                src.line("rM[e] = m_new")


def store(src: Source, module: Module, op: Op) -> None:
    """cc.online_store: a / l into compressed_kv[emit_token], (m, l, a) into run_state[write_row]."""
    elems, head, bits = Schedule.of(module).elems, _i(op, "head", False), _i(op, "vector_bits")
    keep = keep_arg(module)
    src.line("if seg_emit >= 0:")
    with src.indent():
        src.line("# the pooled row the store kernel reads next")
        src.line(f"kv_at = compressed_kv.toint() + (Int64(seg_emit) * {head} + col) * 4")
        store_words(src, "kv_at", [f"ops.f32_bits(rX[{e}])" for e in range(elems)], bits, keep)
    src.line("if seg_write >= 0:")
    with src.indent():
        src.line("# the request's running state, for its next chunk")
        src.line("st_at = run_state.toint() + (Int64(seg_write) * run_state_stride + col) * 4")
        for k, name in enumerate(("rM", "rL", "rA")):
            at = f"st_at + {4 * k * head}" if k else "st_at"
            store_words(src, at, [f"ops.f32_bits({name}[{e}])" for e in range(elems)], bits, keep)


ONLINE_EMITTERS = {"cc.online_merge": merge, "cc.online_store": store}
