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


def global_merge(src: Source, module: Module, op: Op) -> None:
    """Publish this CTA's partial, elect the row's last CTA (`last`), which merges all S."""
    sched = Schedule.of(module)
    elems, split, ctas = sched.elems, sched.split, sched.global_split
    head, flag = int(op.attr("head")), int(op.get("smem_offset")) // 4  # type: ignore[arg-type]
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
    src.line("if last & (group == 0):" if split > 1 else "if last:")
    with src.indent():
        _fold_ranks(src, elems, head, ctas)


def _fold_ranks(src: Source, elems: int, head: int, ctas: int) -> None:
    """(rM, rL, rA) = rank 0's partial, then ranks 1..S-1 folded in, from L2 (ld.global.cg)."""
    src.line(f"rP = cute.make_rmem_tensor(cute.make_layout(({elems}, 3)), Float32)")
    src.line(f"for k in range_constexpr({ctas}):")
    with src.indent():
        vec = min(4, elems)
        names = ", ".join(f"p{c}" for c in range(vec))
        for k in range(3):
            for h in range(0, elems, vec):
                src.line(f"{names}, = ops.ld_l2({_at(head, 'k', k)} + {4 * h}, {vec})")
                for c in range(vec):
                    src.line(f"rP[{h + c}, {k}] = p{c}")
        src.line(f"for e in range_constexpr({elems}):")
        with src.indent():
            src.line("if k == 0:")
            with src.indent():
                for k, name in enumerate(_PARTS):
                    src.line(f"{name}[e] = rP[e, {k}]")
            src.line("else:")
            with src.indent():
                src.line("mg = rP[e, 0]")
                src.line("m_new = ops.fmax(rM[e], mg)")
                src.line("alpha = ops.ex2((rM[e] - m_new) * LOG2E)")
                src.line("beta = ops.ex2((mg - m_new) * LOG2E)")
                src.line("rL[e] = rL[e] * alpha + rP[e, 1] * beta")
                src.line("rA[e] = rA[e] * alpha + rP[e, 2] * beta")
                src.line("rM[e] = m_new")
