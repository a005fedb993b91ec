"""c128a_split's merge: S CTAs of a plain launch pool one row's window (docs/kernels.md §13).

Each CTA pools window rows [rank * W / S, (rank + 1) * W / S) (its split groups merged in
smem first, as every C128 kernel does), writes its (max, sum, weighted sum) partial into
the row's region of the global workspace (specs/abi.py `split_workspace_row`), and counts
its arrival on the row's counter. The last of the S to arrive merges the S partials in rank
order (the order the interpreter and the cluster merge use, so the bytes are the same) and
runs the rest of the row (norm, rope, quantise, store); the others are done with the row.
The counter's atom.inc wraps to 0 on the last arrival: the workspace is ready for the next
launch with no reset kernel (so it can be captured in a CUDA graph and replayed).
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels.row_ops_pool import fold_partial
from compressc.kernels.source import Source
from compressc.kernels.stages_store import store_words

_PARTS = ("rM", "rL", "rA")


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _at(head: int, rank: str, k: int) -> str:
    """The byte address of this lane's first channel of part k of `rank`'s partial."""
    return f"ws_row + (4 + {rank} * {3 * head} + {k * head} + col) * 4"


def publish_partial(src: Source, module: Module, op: Op) -> None:
    """This CTA's group-0 partial into its rank's part of the row's workspace region."""
    head, elems = _a(op, "head"), _a(op, "elems")
    src.line(f"# the row's {_a(op, 'ctas')} partials meet in global memory (docs/kernels.md §13)")
    src.line(f"ws_row = split_workspace.toint() + Int64(row) * {_a(op, 'row_bytes')}")
    group0 = bool(op.attr("group0"))
    if group0:
        src.line("if group == 0:")
    with src.indent(int(group0)):
        for k, name in enumerate(_PARTS):
            words = [f"ops.f32_bits({name}[{e}])" for e in range(elems)]
            store_words(src, _at(head, "rank", k), words, _a(op, "bits"), "")


def arrive_last(src: Source, module: Module, op: Op) -> None:
    """Count this CTA's arrival (atom.inc wraps to 0 on the last): `last` on the S-th to arrive."""
    ctas, flag = _a(op, "ctas"), _a(op, "flag")
    src.line("ops.fence_gpu()  # this thread's partial before the CTA's arrival (__threadfence)")
    src.line("cute.arch.sync_threads()  # every thread's partial is written and fenced")
    src.line("if tidx == 0:")
    with src.indent():
        src.line(f"sBuf[{flag}] = Float32(ops.arrive_count(ws_row, {ctas - 1}))")
        src.line("ops.fence_gpu()  # acquire: the other CTAs' partials are visible after their arrivals")
    src.line("cute.arch.sync_threads()")
    src.line(f"last = sBuf[{flag}] == Float32({ctas - 1})  # this CTA arrived last: it finishes the row")


def split_lanes(src: Source, module: Module, op: Op) -> None:
    me, ctas = _a(op, "me"), _a(op, "ctas")
    src.line(f"# {me} channel(s) a thread: {ctas} x 3 x {me} loads in flight, not {ctas} x 3 x "
             f"{_a(op, 'elems')}")
    src.line(f"mcol = tidx * {me}")
    src.line(f"rP = cute.make_rmem_tensor(cute.make_layout(({me}, 3, {ctas})), Float32)")


def load_partials(src: Source, module: Module, op: Op) -> None:
    """Every rank's partial of the thread's `me` channels from L2, all issued before the fold."""
    head, me, vec = _a(op, "head"), _a(op, "me"), _a(op, "vec")
    names = ", ".join(f"p{c}" for c in range(vec))
    for rank in range(_a(op, "ctas")):
        for k in range(3):
            for h in range(0, me, vec):
                at = f"ws_row + (4 + {rank * 3 * head + k * head} + mcol) * 4 + {4 * h}"
                src.line(f"{names}, = ops.ld_l2({at}, {vec})")
                src.line("; ".join(f"rP[{h + c}, {k}, {rank}] = p{c}" for c in range(vec)))


def merged_to_lanes(src: Source, module: Module, op: Op) -> None:
    src.line(f"for e in range_constexpr({_a(op, 'me')}):")
    src.line("    rL[e] = qL[e]")
    src.line("    rA[e] = qA[e]")


def merged_to_smem(src: Source, module: Module, op: Op) -> None:
    base, head = _a(op, "slot"), _a(op, "head")
    src.line("# group 0's lanes take the merged (sum, weighted sum) of their channels from smem")
    src.line(f"for e in range_constexpr({_a(op, 'me')}):")
    src.line(f"    sBuf[{base} + mcol + e] = qL[e]")
    src.line(f"    sBuf[{base + head} + mcol + e] = qA[e]")


def lanes_from_smem(src: Source, module: Module, op: Op) -> None:
    base, head = _a(op, "slot"), _a(op, "head")
    src.line("cute.arch.sync_threads()")
    src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
    src.line(f"    rL[e] = sBuf[{base} + col + e]")
    src.line(f"    rA[e] = sBuf[{base + head} + col + e]")


def fold_partials(src: Source, module: Module, op: Op) -> None:
    """(qM, qL, qA) = rank 0's partial with ranks 1..S-1 folded in, as the cluster merge folds."""
    me, ctas = _a(op, "me"), _a(op, "ctas")
    for name, k in (("qM", 0), ("qL", 1), ("qA", 2)):
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout({me}), Float32)")
        src.line(f"for e in range_constexpr({me}):")
        src.line(f"    {name}[e] = rP[e, {k}, 0]")
    src.line(f"for k in range_constexpr(1, {ctas}):")
    with src.indent():
        src.line(f"for e in range_constexpr({me}):")
    with src.indent(2):
        src.line("mg = rP[e, 0, k]")
        fold_partial(src, "rP[e, 1, k]", "rP[e, 2, k]", ("qM", "qL", "qA"))


def opener(line: str):
    """An op that opens a branch (closed by kd.end_if: the walker restores the depth)."""
    def emit(src: Source, module: Module, op: Op) -> None:
        src.line(line)
        src.depth += 1

    return emit


SPLIT_EMIT = {
    "kd.publish_partial": publish_partial,
    "kd.arrive_last": arrive_last,
    "kd.if_last": opener("if last:"),
    "kd.split_lanes": split_lanes,
    "kd.if_tidx": lambda src, module, op: opener(f"if tidx < {op.attr('below')}:")(src, module, op),
    "kd.load_partials": load_partials,
    "kd.fold_partials": fold_partials,
    "kd.merged_to_lanes": merged_to_lanes,
    "kd.merged_to_smem": merged_to_smem,
    "kd.lanes_from_smem": lanes_from_smem,
}
