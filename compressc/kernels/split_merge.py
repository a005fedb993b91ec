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
from compressc.ir.schedule import Schedule
from compressc.kernels.source import Source
from compressc.kernels.stages_store import store_words
from compressc.specs.abi import split_workspace_row

_PARTS = ("rM", "rL", "rA")


def _at(head: int, rank: str, k: int) -> str:
    """The byte address of this lane's first channel of part k of `rank`'s partial."""
    return f"ws_row + (4 + {rank} * {3 * head} + {k * head} + col) * 4"


def emit_global_merge(src: Source, module: Module, op: Op) -> None:
    """kd.global_merge {head, slot, ctas}: the pool's smem slot and the row's CTAs, from the op."""
    global_merge(src, module, int(op.attr("head")), int(op.attr("slot")))  # type: ignore[arg-type]


def global_merge(src: Source, module: Module, head: int, base: int) -> None:
    """Publish this CTA's partial, elect the row's last CTA (`last`), which merges all S."""
    sched = Schedule.of(module)
    elems, split, ctas = sched.elems, sched.split, sched.global_split
    flag = base + 2 * head  # past the merged (sum, weighted sum) that _fold_ranks leaves at base
    src.line(f"# the row's {ctas} partials meet in global memory (docs/kernels.md §13)")
    src.line(f"ws_row = split_workspace.toint() + Int64(row) * {4 * split_workspace_row(head)}")
    if split > 1:
        src.line("if group == 0:")
        src.depth += 1
    bits = min(128, 32 * elems)  # a lane's run of channels, 16 bytes a store at most
    for k, name in enumerate(_PARTS):
        store_words(src, _at(head, "rank", k), [f"ops.f32_bits({name}[{e}])" for e in range(elems)], bits, "")
    src.depth -= 1 if split > 1 else 0
    src.line("ops.fence_gpu()  # this thread's partial before the CTA's arrival (__threadfence)")
    src.line("cute.arch.sync_threads()  # every thread's partial is written and fenced")
    src.line("if tidx == 0:")
    with src.indent():
        src.line(f"sBuf[{flag}] = Float32(ops.arrive_count(ws_row, {ctas - 1}))")
        src.line("ops.fence_gpu()  # acquire: the other CTAs' partials are visible after their arrivals")
    src.line("cute.arch.sync_threads()")
    src.line(f"last = sBuf[{flag}] == Float32({ctas - 1})  # this CTA arrived last: it finishes the row")
    src.line("if last:")
    with src.indent():
        _fold_ranks(src, module, head, ctas, base)


def _fold_ranks(src: Source, module: Module, head: int, ctas: int, base: int) -> None:
    """The last CTA's threads split the head between them (`me` channels each, every thread of
    the CTA) and fold the S partials from L2 in rank order: rank 0's, then 1..S-1 (all loads
    issued before the first fold: one L2 round trip). Where the CTA has more threads than one
    head's lanes, the merged (sum, weighted sum) reach group 0's lanes through smem."""
    sched = Schedule.of(module)
    me = max(1, head // sched.threads)
    src.line(f"# {me} channel(s) a thread: {ctas} x 3 x {me} loads in flight, not {ctas} x 3 x {sched.elems}")
    src.line(f"mcol = tidx * {me}")
    src.line(f"rP = cute.make_rmem_tensor(cute.make_layout(({me}, 3, {ctas})), Float32)")
    guard = sched.threads > head  # the fold's values live inside this `if`: use them there
    if guard:
        src.line(f"if tidx < {head}:")
        src.depth += 1
    vec = min(4, me)
    names = ", ".join(f"p{c}" for c in range(vec))
    for rank in range(ctas):
        for k in range(3):
            for h in range(0, me, vec):
                at = f"ws_row + (4 + {rank * 3 * head + k * head} + mcol) * 4 + {4 * h}"
                src.line(f"{names}, = ops.ld_l2({at}, {vec})")
                src.line("; ".join(f"rP[{h + c}, {k}, {rank}] = p{c}" for c in range(vec)))
    _fold(src, me, ctas)
    if sched.threads == sched.head_lanes:  # mcol == col: the thread's own lane's channels
        src.line(f"for e in range_constexpr({me}):")
        src.line("    rL[e] = qL[e]")
        src.line("    rA[e] = qA[e]")
        src.depth -= int(guard)
        return
    src.line("# group 0's lanes take the merged (sum, weighted sum) of their channels from smem")
    src.line(f"for e in range_constexpr({me}):")
    src.line(f"    sBuf[{base} + mcol + e] = qL[e]")
    src.line(f"    sBuf[{base + head} + mcol + e] = qA[e]")
    src.depth -= int(guard)
    src.line("cute.arch.sync_threads()")
    src.line(f"for e in range_constexpr({sched.elems}):")
    src.line(f"    rL[e] = sBuf[{base} + col + e]")
    src.line(f"    rA[e] = sBuf[{base + head} + col + e]")


def _fold(src: Source, me: int, ctas: int) -> None:
    """(qM, qL, qA) = rank 0's partial with ranks 1..S-1 folded in, as the cluster merge folds."""
    for name, k in (("qM", 0), ("qL", 1), ("qA", 2)):
        src.line(f"{name} = cute.make_rmem_tensor(cute.make_layout({me}), Float32)")
        src.line(f"for e in range_constexpr({me}):")
        src.line(f"    {name}[e] = rP[e, {k}, 0]")
    src.line(f"for k in range_constexpr(1, {ctas}):")
    with src.indent():
        src.line(f"for e in range_constexpr({me}):")
        with src.indent():
            src.line("mg = rP[e, 0, k]")
            src.line("m_new = ops.fmax(qM[e], mg)")
            src.line("alpha = ops.ex2((qM[e] - m_new) * LOG2E)")
            src.line("beta = ops.ex2((mg - m_new) * LOG2E)")
            src.line("qL[e] = qL[e] * alpha + rP[e, 1, k] * beta")
            src.line("qA[e] = qA[e] * alpha + rP[e, 2, k] * beta")
            src.line("qM[e] = m_new")
