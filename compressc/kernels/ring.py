"""The emitters of the C128 ring state (docs/kernels.md §10): lower-row's `kd.ring_window` and
`kd.ring_base` (the lowering of `cc.ring_state`) and the window rows they feed.

They run once per active row, before the window: they find where the row's
window starts in this launch (`t0`), the first window row that lies in the request's chunk
(`ring_split`) and the ring row of window row 0 (`ring_base`). The window then loads each
row from one of the two places; the branch is uniform over a lane group (every lane of a
group pools the same window row), so it costs no divergence.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels import loads
from compressc.kernels.source import Source


def _attr(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def ring_window(src: Source, module: Module, op: Op) -> None:
    """`t0`, the launched row of window row 0, and `ring_split`, the first window row in the
    request's chunk (a kd.ring_window)."""
    window = _attr(op, "window")
    src.line("# docs/kernels.md §10: window row i is launched row t0 + i when that row is in the")
    src.line("# request's chunk (t0 + i >= query_start_loc[req]), else ring row (s0 + i) mod capacity;")
    src.line(f"# s0 and the capacity are multiples of {window}: the window never wraps in the ring")
    src.line(f"t0 = row - {window - 1}")
    src.line("ring_split = cute.make_tensor(query_start_loc, cute.make_layout(req + 1))[req] - t0")


def ring_base(src: Source, module: Module, op: Op) -> None:
    """`ring_base`, the state_cache word of window row 0 in the request's ring (a kd.ring_base:
    one block-table lookup and one modulo a row)."""
    src.line("ring_blk = Int64(cute.make_tensor(block_table + req * block_table_stride, "
             "cute.make_layout(1))[0])")
    src.line(f"ring_row0 = (pos - {_attr(op, 'window') - 1}) % Int64(ring_capacity)")
    src.line(f"ring_base = ring_blk * ring_block_stride + ring_row0 * {_attr(op, 'row_words')}")


def row_loads(src: Source, op: Op) -> None:
    """Window row wi = i0 + r into rKV[:, r], rSC[:, r] (a kd.ring_row): from this launch
    (score + ape) or the ring."""
    elems, head, width, vec = _attr(op, "elems"), _attr(op, "head"), _attr(op, "width"), _attr(op, "vec")
    src.line("wi = i0 + r")
    src.line("if wi >= ring_split:")
    with src.indent():
        src.line("# in this launch: kv[t0 + wi], score[t0 + wi] + ape[wi] (ape row q mod 128 = wi)")
        src.line("rt = Int64(t0 + wi)")
        load(src, "kv", "rt * kv_row_stride + col", "rKV", op)
        load(src, "score", "rt * score_row_stride + col", "rSC", op)
        src.line(f"rAP = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
        src.line(f"cute.autovec_copy(cute.make_tensor(ape + cute.assume(wi * {head} + col, divby={vec}), "
                 f"cute.make_layout({elems})), rAP)  # plain loads: every row reads ape, keep it cached")
        src.line(f"for e in range_constexpr({elems}):")
        src.line("    rSC[e, r] = rSC[e, r] + rAP[e]")
    src.line("else:")
    with src.indent():
        src.line("# in the ring: [kv | score + ape] as the previous steps saved it")
        src.line(f"base = ring_base + Int64(wi) * {2 * width} + col")
        load(src, "state_cache", "base", "rKV", op)
        load(src, "state_cache", f"base + {width}", "rSC", op)


def load(src: Source, ptr: str, at: str, frag: str, op: Op) -> None:
    """`frag[:, r]` = ptr[at ..], the op's `vec` fp32 a load, read once where its cache_hint is
    "stream" (ld.global.L1::no_allocate.L2::evict_first), else plain."""
    stream = op.attr("cache_hint") == "stream"
    loads.row_loads(src, ptr, at, frag, _attr(op, "elems"), _attr(op, "vec"), stream)


RING_EMIT = {"kd.ring_window": ring_window, "kd.ring_base": ring_base}
