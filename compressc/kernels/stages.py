"""The row body: the lane-level `kd.*` ops lower-row writes for the row ops (the ring state, the
window, the merges, the epilogue, C128A's row loads and stores, the online merge:
compressc.kernels.row_ops), in module order; the row loop around it is the kernel dialect's
(compressc.kernels.grid).

Names follow quack's convention: `m*` whole-tensor views of global memory, `r*`
register fragments, `s*` shared memory; `col` is the first channel a lane owns.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.kd_row import OPERAND_LOADS, RowNode, row_program
from compressc.kernels.bounds import bounds as bounds_emit
from compressc.kernels.row_ops import ROW_EMIT
from compressc.kernels.source import Source


def _i(op: Op, key: str, sched: bool = True) -> int:
    return int(op.get(key) if sched else op.attr(key))  # type: ignore[arg-type]


def ballot(src: Source, guard_op: Op, base: str, count: str) -> None:
    """Lane i reads row base + i's metadata (one round trip for 32 rows); a ballot hands
    every lane the set of active rows, so inactive rows cost nothing more."""
    src.line(f"# in every warp, lane i reads row {base} + i's metadata (one round trip for the block)")
    src.line("# and a ballot hands each lane the set of active rows: inactive rows cost nothing more")
    src.line(f"row = {base} + lane")
    src.line("mine = cutlass.Boolean(False)")
    src.line(f"if lane < {count} and row < num_rows:")
    with src.indent():
        guard(src, guard_op)
        src.line("mine = active")
    src.line("todo = cute.arch.vote_ballot_sync(mine)")



def row(src: Source, module: Module, operands: bool = True) -> None:
    """The work of one active row: every row kd op's emitter in order (the coarse ops are the
    spec of the `kd.*` ops lower-row wrote for them, and print nothing)."""
    depth = src.depth
    if operands:
        operand_loads(src, module)
    _row_nodes(src, module, row_program(module.ops))
    src.depth = depth


def _row_nodes(src: Source, module: Module, nodes: tuple[RowNode, ...]) -> None:
    for node in nodes:
        op, depth = node.op, src.depth
        if op.name in ROW_EMIT and op.attr("at") != "early":
            ROW_EMIT[op.name](src, module, op)
        if node.body:
            _row_nodes(src, module, node.body)
            src.depth = depth


def operand_loads(src: Source, module: Module) -> None:
    """The loads lower-row placed early: their latency hides under the window gather."""
    for op in module.ops:
        if op.name in OPERAND_LOADS and op.attr("at") == "early":
            owner = OPERAND_LOADS[op.name]
            src.line(f"# {owner}'s operands now: their latency hides under the window gather")
            ROW_EMIT[op.name](src, module, op)


def guard(src: Source, op: Op | None) -> None:
    """The row's metadata and whether it is active (`op`: a kd.guard, or the kd.ballot or
    kd.sweeps that guards its rows); with `checks`, the checked build's bounds checks after it."""
    assert op is not None
    ratio = _i(op, "ratio", sched=False)
    src.line("# docs/kernels.md §3.1: active only at a boundary token with a request, a position and slots")
    src.line("pos = Int64(-1)")
    src.line("if row < num_positions:")
    src.line("    pos = cute.make_tensor(positions, cute.make_layout(num_positions))[row]")
    src.line("kv_slot = Int64(-1)")
    src.line("if row < num_kv_slots:")
    src.line("    kv_slot = cute.make_tensor(kv_slot_mapping, cute.make_layout(num_kv_slots))[row]")
    src.line("slot = cute.make_tensor(slot_mapping, cute.make_layout(num_rows))[row]")
    src.line("req = cute.make_tensor(token_to_req_indices, cute.make_layout(num_rows))[row]")
    src.line(f"active = (slot >= 0) & (req >= 0) & (pos >= 0) & (kv_slot >= 0) & ((pos + 1) % {ratio} == 0)")
    if op.attr("checks"):
        bounds_emit(src, op)

