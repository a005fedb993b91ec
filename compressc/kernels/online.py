"""Emitters of the online C128 merge (docs/kernels.md §9): the segment's metadata, the running
softmax over its token rows and the two stores. One function per op, no decisions: the batch
of rows in flight, the vector widths and the cache hints are the passes'.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.online import SEGMENT_FIELDS
from compressc.kernels.loads import row_loads
from compressc.kernels.source import Source
from compressc.kernels.stages_store import store_words

_SEG = ("seg_base", "seg_rows", "seg_read", "seg_emit", "seg_write")


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


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


def seed_state(src: Source, module: Module, op: Op) -> None:
    """kd.seed_state: (m, l, a) from the request's committed running state, where it has one."""
    elems, head, vec = _a(op, "elems"), _a(op, "head"), _a(op, "vec")
    src.line("if seg_read >= 0:")
    with src.indent():
        src.line("# seeded from the request's committed running state: max | sum | weighted sum")
        src.line("st_at = Int64(seg_read) * run_state_stride + col")
        for k, name in enumerate(("rM", "rL", "rA")):
            at = f"st_at + {k * head}" if k else "st_at"
            src.line(f"cute.autovec_copy({_view('run_state', at, elems, vec)}, {name})")


def segment_batches(src: Source, module: Module, op: Op) -> None:
    """kd.segment_batches: the segment's rows, `batch` rows' loads before their updates."""
    rows = _a(op, "batch")
    src.line(f"for chunk in cutlass.range((seg_rows + {rows - 1}) // {rows}, unroll=1):")
    with src.indent():
        src.line(f"k0 = chunk * {rows}")
        _batch_loads(src, op)
        _batch_updates(src, _a(op, "elems"), rows)


def _batch_loads(src: Source, op: Op) -> None:
    """Every load of the batch before its first update; a tail row past the segment loads its
    last row again (in bounds) and is not counted."""
    elems, rows, vec, ratio, head = (_a(op, k) for k in ("elems", "batch", "vec", "ratio", "head"))
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
            row_loads(src, ptr, f"t * {stride} + col", frag, elems, vec, op.attr("cache_hint") == "stream")
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


def _keep(op: Op) -> str:
    return ", keep=True" if op.attr("keep") else ""


def emit_pooled(src: Source, module: Module, op: Op) -> None:
    """kd.emit_pooled: a / l into compressed_kv[emit_token], where the segment emits one."""
    elems, head = _a(op, "elems"), _a(op, "head")
    src.line("if seg_emit >= 0:")
    with src.indent():
        src.line("# the pooled row the store kernel reads next")
        src.line(f"kv_at = compressed_kv.toint() + (Int64(seg_emit) * {head} + col) * 4")
        words = [f"ops.f32_bits(rX[{e}])" for e in range(elems)]
        store_words(src, "kv_at", words, _a(op, "bits"), _keep(op))


def write_state(src: Source, module: Module, op: Op) -> None:
    """kd.write_state: (m, l, a) into run_state[write_row], for the request's next chunk."""
    elems, head = _a(op, "elems"), _a(op, "head")
    src.line("if seg_write >= 0:")
    with src.indent():
        src.line("# the request's running state, for its next chunk")
        src.line("st_at = run_state.toint() + (Int64(seg_write) * run_state_stride + col) * 4")
        for k, name in enumerate(("rM", "rL", "rA")):
            at = f"st_at + {4 * k * head}" if k else "st_at"
            words = [f"ops.f32_bits({name}[{e}])" for e in range(elems)]
            store_words(src, at, words, _a(op, "bits"), _keep(op))


ONLINE_EMIT = {"kd.seed_state": seed_state, "kd.segment_batches": segment_batches,
               "kd.emit_pooled": emit_pooled, "kd.write_state": write_state}
