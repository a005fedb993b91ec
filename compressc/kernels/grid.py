"""The emitter of the kernel dialect's row loop: one small function per `kd.*` op.

Each function prints its op and decides nothing: the grid strategy, the ballots and the
synchronisation were chosen by the lower-grid pass. An op that opens a body indents it;
the walker restores the depth after the body (and prints `else:` between branches).
"""

from __future__ import annotations

from collections.abc import Callable

from compressc.ir.core import Module, Op
from compressc.ir.kd import Node, program
from compressc.kernels import fused, online, stages
from compressc.kernels import window as window_emit
from compressc.kernels.prologue import PROLOGUE_EMIT
from compressc.kernels.source import Source

Emit = Callable[[Source, Module, Op], None]


def emit_program(src: Source, module: Module) -> None:
    """The kernel body: the module's `kd.*` program, op by op."""
    _walk(src, module, program(module))


def _walk(src: Source, module: Module, nodes: tuple[Node, ...]) -> None:
    for node in nodes:
        depth = src.depth
        _EMIT[node.op.name](src, module, node.op)
        _walk(src, module, node.body)
        if node.op.name in _CLOSE:
            _CLOSE[node.op.name](src, depth)
        src.depth = depth
        if node.orelse:
            src.line("else:")
            src.depth += 1
            _walk(src, module, node.orelse)
            src.depth = depth


def _lines(*lines: str, indent: bool = False) -> Emit:
    def emit(src: Source, module: Module, op: Op) -> None:
        for line in lines:
            src.line(line)
        src.depth += int(indent)

    return emit


def _guard(src: Source, module: Module, op: Op) -> None:
    stages.guard(src, op)


def _row(src: Source, module: Module, op: Op) -> None:
    stages.row(src, module, operands=bool(op.attr("operands")))


def _runs_span(src: Source, module: Module, op: Op) -> None:
    run = op.attr("rows")
    src.line("cta, _, _ = cute.arch.block_idx()")
    src.line(f"# runs grid: this CTA owns launched rows row0 .. row0 + per_cta - 1, per_cta <= {run}")
    src.line("# (compressc.runtime.args.launch_grid: one row per CTA until the SMs are full), the")
    src.line(f"# {run} row bodies unrolled: inside a dynamic loop ptxas sinks the window loads")
    src.line("# between the updates. Rows past per_cta have no ballot bit.")
    src.line("ctas, _, _ = cute.arch.grid_dim()")
    src.line("per_cta = (num_rows + ctas - 1) // ctas")
    src.line("row0 = cta * per_cta")


def _ballot(src: Source, module: Module, op: Op) -> None:
    stages.ballot(src, op, str(op.attr("base")), str(op.attr("count")))


def _set_row(src: Source, module: Module, op: Op) -> None:
    warp = f" + {op.attr('warp')} * 32" if op.attr("warp") else ""
    src.line(f"row = {op.attr('base')}{warp} + {op.attr('index')}")
    src.line("# this row's metadata again: the ballot round trip left it in L1")


def _cta_index(src: Source, module: Module, op: Op) -> None:
    cluster = int(op.attr("cluster"))  # type: ignore[arg-type]
    src.line("cta, _, _ = cute.arch.block_idx()")
    src.line("ctas, _, _ = cute.arch.grid_dim()")
    if cluster > 1:
        src.line(f"# clusters of {cluster} CTAs (x-consecutive, the launch's cluster dimension) share their")
        src.line("# rows: from here on `cta` and `ctas` count clusters, and `rank` picks the window part")
        src.line(f"cta = cta // {cluster}")
        src.line(f"ctas = ctas // {cluster}")


def _one_row_per_cta(src: Source, module: Module, op: Op) -> None:
    unit = "cluster" if int(op.attr("cluster")) > 1 else "CTA"  # type: ignore[arg-type]
    src.line("if ctas >= num_rows:")
    src.depth += 1
    src.line(f"# one row per {unit} (the grid is not capped at this T): the row grid's body, no ballot")
    src.line("row = cta")


def _sweeps(src: Source, module: Module, op: Op) -> None:
    warps = int(op.attr("warps"))  # type: ignore[arg-type]
    span = 32 * warps
    # loop names a row body never uses (its own loops use w, e, g, r, ...)
    src.line("# a sweep: warp w reads the metadata of rows sw0 + 32w .. + 31 and ballots them; the")
    src.line(f"# {warps} masks meet in smem, so one round trip decides {span} rows")
    src.line(f"sTodo = cute.make_tensor(cute.arch.alloc_smem(Int32, {warps}, alignment=16), "
             f"cute.make_layout({warps}))")
    src.line(f"for sweep in cutlass.range((per_cta + {span - 1}) // {span}, unroll=1):")
    src.depth += 1
    src.line(f"sw0 = row0 + sweep * {span}")
    src.line("blk0 = sw0 + warp * 32")
    src.line("left = row0 + per_cta - blk0")
    src.line("n = left if left < 32 else Int32(32)")
    stages.ballot(src, op, "blk0", "n")
    src.line("if lane == 0:")
    src.line("    sTodo[warp] = Int32(todo)")
    src.line("cute.arch.sync_threads()")
    src.line(f"for sw_w in cutlass.range({warps}, unroll=1):")
    src.depth += 1
    src.line("wtodo = sTodo[sw_w]")
    src.line("rem = wtodo")
    src.line("for sw_k in cutlass.range(ops.popc(wtodo), unroll=1):")
    src.depth += 1
    src.line("sw_i = ops.lowest_bit(rem)")
    src.line("rem = rem & (rem - 1)")


def _close_sweeps(src: Source, depth: int) -> None:
    src.depth = depth + 1
    src.line("cute.arch.sync_threads()  # the next sweep rewrites sTodo")


def _stage_pipeline(src: Source, module: Module, op: Op) -> None:
    src.line("# software pipeline over the block's active rows: row k + 1's window is copied into")
    src.line("# the other smem slot (cp.async) before row k pools, so its page-table and window")
    src.line("# round trips run under row k's math. A lane reads back only what it copied itself, and")
    src.line("# it has used row k - 1's values (stored them) before it refills that slot for row k + 1")
    src.line("rem = todo")


def _staged_rows(src: Source, module: Module, op: Op) -> None:
    src.line("for st_k in cutlass.range(ops.popc(todo), unroll=1):")
    src.depth += 1
    src.line("st_i = ops.lowest_bit(rem)")
    src.line("rem = rem & (rem - 1)")
    src.line(f"stg = st_k & {int(op.attr('slots')) - 1}  # this row's smem slot")  # type: ignore[arg-type]
    src.line("more = rem != 0")


def _staged_wait(src: Source, module: Module, op: Op) -> None:
    src.line("if more:")
    src.line(f"    ops.cp_async_wait({op.attr('in_flight')})  # this row's copies landed; the next row's "
             "may fly")
    src.line("else:")
    src.line("    ops.cp_async_wait(0)")


def _operand_loads(src: Source, module: Module, op: Op) -> None:
    stages.operand_loads(src, module)


_EMIT: dict[str, Emit] = {
    **PROLOGUE_EMIT,
    "kd.trigger_dependents": _lines(
        "# the kernel that reads these rows may launch now: its CTAs start as ours retire and",
        "# wait (griddepcontrol.wait) for this grid only before they load what it wrote",
        "cute.arch.griddepcontrol_launch_dependents()"),
    "kd.grid_wait": _lines(
        "# a CTA without an active row waits too: this grid must not finish before the one it",
        "# overlaps, as work after it on the stream relies on both",
        "cute.arch.griddepcontrol_wait()"),
    "kd.cta_row": _lines("row, _, _ = cute.arch.block_idx()"),
    "kd.guard": _guard,
    "kd.if_active": _lines("if active:", indent=True),
    "kd.row": _row,
    "kd.runs_span": _runs_span,
    "kd.ballot": _ballot,
    "kd.unrolled_rows": lambda src, module, op: _lines(
        f"for i in range_constexpr({op.attr('rows')}):", indent=True)(src, module, op),
    "kd.if_todo_bit": _lines("if (todo >> i) & 1 != 0:", indent=True),
    "kd.set_row": _set_row,
    "kd.cta_sync": _lines("cute.arch.sync_threads()  # the next row reuses the smem slots"),
    "kd.cta_index": _cta_index,
    "kd.one_row_per_cta": _one_row_per_cta,
    "kd.tiled_span": _lines(
        "# tiled grid: this CTA owns launched rows row0 .. row0 + per_cta - 1 (one wave of CTAs:",
        "# compressc.runtime.args.launch_grid sizes the grid by the CTAs an SM holds)",
        "per_cta = (num_rows + ctas - 1) // ctas",
        "row0 = cta * per_cta"),
    "kd.blocks32": _lines(
        "for blk in cutlass.range((per_cta + 31) // 32, unroll=1):",
        "    blk0 = row0 + blk * 32",
        "    left = per_cta - blk * 32",
        "    n = left if left < 32 else Int32(32)", indent=True),
    "kd.ballot_rows": _lines("for i in cutlass.range(n, unroll=1):", indent=True),
    "kd.sweeps": _sweeps,
    "kd.stage_pipeline": _stage_pipeline,
    "kd.stage_issue": window_emit.stage_issue,
    "kd.staged_rows": _staged_rows,
    "kd.operand_loads": _operand_loads,
    "kd.segment": online.segment,
    # a fused kernel (docs/kernels.md §12): a narrower part's row groups, the dispatch
    "kd.row_groups": fused.row_groups,
    "kd.part_index": fused.part_index,
    "kd.if_part": fused.if_part,
    "kd.call_part": fused.call_part,
    "kd.staged_wait": _staged_wait,
}
_CLOSE = {"kd.sweeps": _close_sweeps}
