"""The kernel dialect's structure: `kd.*` ops in a flat list, nested by `kd.end`.

An op of OPENERS opens a body that the matching `kd.end` closes; `kd.else` inside a
`kd.one_row_per_cta` body starts its other branch. `program` returns the tree the
emitter and the interpreter walk; the verifier calls it to check the nesting.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressc.ir.core import Module, Op
from compressc.ir.kd_row import ROW_ATTRS

# op -> the attributes it must carry
KD_ATTRS: dict[str, tuple[str, ...]] = {
    # the prologue: the lanes' layout, the CTA's rank among a row's CTAs, its shared memory
    "kd.lanes": ("elems", "head_lanes", "groups"),
    "kd.split_rank": ("ctas",),
    "kd.cluster_rank": ("ctas",),
    "kd.stage_smem": ("bytes",),
    "kd.static_smem": ("words",),
    "kd.trigger_dependents": (),
    "kd.grid_wait": (),
    "kd.cta_row": (),
    "kd.guard": ("ratio", "checks", "window", "absent"),
    "kd.if_active": (),
    "kd.row": ("operands",),
    "kd.runs_span": ("rows",),
    "kd.ballot": ("base", "count", "ratio", "checks", "window", "absent"),
    "kd.unrolled_rows": ("rows",),
    "kd.if_todo_bit": (),
    "kd.set_row": ("base", "index"),
    "kd.cta_sync": (),
    "kd.cta_index": ("cluster",),
    "kd.one_row_per_cta": ("cluster",),
    "kd.tiled_span": (),
    "kd.blocks32": (),
    "kd.ballot_rows": (),
    "kd.sweeps": ("warps", "ratio", "checks", "window", "absent"),
    # the smem-staged window's software pipeline (compressc/passes/lower_row_window.py)
    "kd.stage_pipeline": (),
    "kd.stage_issue": ("row", "slot", "window", "absent", "streams", "ratio", "head", "width", "copies",
                       "threads", "slot_bytes"),
    "kd.staged_rows": ("slots",),
    "kd.operand_loads": (),
    "kd.staged_wait": ("in_flight",),
    "kd.segment": (),
    # a fused kernel (docs/kernels.md §12): a part's row groups, the dispatch to its parts
    "kd.row_groups": ("groups", "head_lanes", "elems"),
    "kd.part_index": (),
    "kd.if_part": ("index",),
    "kd.call_part": ("part",),
    "kd.else": (),
    "kd.end": (),
}
OPENERS = frozenset({"kd.if_active", "kd.unrolled_rows", "kd.if_todo_bit", "kd.one_row_per_cta",
                     "kd.blocks32", "kd.ballot_rows", "kd.sweeps", "kd.staged_rows", "kd.row_groups",
                     "kd.if_part"})
# where each row-body variable a `kd.set_row` names comes from
ROW_BASES = ("row0", "blk0", "sw0")


class NestingError(ValueError):
    """The `kd.*` ops do not nest: the message names the op."""


@dataclass(frozen=True, slots=True)
class Node:
    op: Op
    body: tuple[Node, ...] = ()
    orelse: tuple[Node, ...] = ()


def is_program_op(op: Op) -> bool:
    """A `kd.*` op of the row loop (not of the row body that lower-row writes: kd_row.py)."""
    return op.name.startswith("kd.") and op.name not in ROW_ATTRS


def kd_ops(module: Module) -> list[Op]:
    return [op for op in module.ops if is_program_op(op)]


def program(module: Module) -> tuple[Node, ...]:
    """The module's kernel-dialect program as a tree; NestingError where it does not nest."""
    nodes, rest = _block(kd_ops(module), 0, None)
    if rest != len(kd_ops(module)):
        raise NestingError(f"{_at(kd_ops(module)[rest])}: closes a body that was never opened")
    return nodes


def _block(ops: list[Op], i: int, opener: Op | None) -> tuple[tuple[Node, ...], int]:
    nodes: list[Node] = []
    while i < len(ops):
        op = ops[i]
        if op.name in ("kd.end", "kd.else"):
            if opener is None:
                raise NestingError(f"{_at(op)}: closes a body that was never opened")
            return tuple(nodes), i
        if op.name not in OPENERS:
            nodes.append(Node(op))
            i += 1
            continue
        body, i = _block(ops, i + 1, op)
        orelse: tuple[Node, ...] = ()
        if i < len(ops) and ops[i].name == "kd.else":
            if op.name != "kd.one_row_per_cta":
                raise NestingError(f"{_at(ops[i])}: only kd.one_row_per_cta has an else branch")
            orelse, i = _block(ops, i + 1, op)
            if i < len(ops) and ops[i].name == "kd.else":
                raise NestingError(f"{_at(ops[i])}: a second else branch (close the first with kd.end)")
        if i >= len(ops):
            raise NestingError(f"{_at(op)}: its body is never closed with kd.end")
        nodes.append(Node(op, body, orelse))
        i += 1
    if opener is not None:
        raise NestingError(f"{_at(opener)}: its body is never closed with kd.end")
    return tuple(nodes), i


def _at(op: Op) -> str:
    return (f"{op.loc}: " if op.loc else "") + op.name
