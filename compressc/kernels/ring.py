"""The emitters of the C128 ring state (docs/kernels.md §10): `cc.ring_state` and the window
rows it feeds.

`cc.ring_state` runs once per active row, before the window: it finds where the row's
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


def ring_state(src: Source, module: Module, op: Op) -> None:
    """The row's window in this launch and in its ring (one lookup and one modulo a row)."""
    window, width = _attr(op, "window"), _attr(op, "state_width")
    src.line("# docs/kernels.md §10: window row i is launched row t0 + i when that row is in the")
    src.line("# request's chunk (t0 + i >= query_start_loc[req]), else ring row (s0 + i) mod capacity;")
    src.line(f"# s0 and the capacity are multiples of {window}: the window never wraps in the ring")
    src.line(f"t0 = row - {window - 1}")
    src.line("ring_split = cute.make_tensor(query_start_loc, cute.make_layout(req + 1))[req] - t0")
    src.line("ring_blk = Int64(cute.make_tensor(block_table + req * block_table_stride, "
             "cute.make_layout(1))[0])")
    src.line(f"ring_row0 = (pos - {window - 1}) % Int64(ring_capacity)")
    src.line(f"ring_base = ring_blk * ring_block_stride + ring_row0 * {2 * width}")


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
