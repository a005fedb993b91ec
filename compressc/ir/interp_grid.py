"""The interpreter of the kernel dialect's row loop: every CTA of a launch, op by op.

The launch's grid comes from the module's grid rule through the runtime's own
`launch_grid` (with a small simulated GPU, so CTAs own long runs of rows); each CTA (or
cluster) then walks the `kd.*` program as the emitted kernel does: its span of rows,
the warp ballots of their metadata, the unrolled runs, blocks and sweeps, and runs the
row ops (`compressc.ir.interp_stages`) on every row the program finds active. A row
body entered for an inactive row, a row run twice or a read past the launch's rows is
an error: a grid bug shows up on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from compressc.ir.core import Module, Op
from compressc.ir.interp_row import run_row_ops
from compressc.ir.interp_stage import StageSmem, issue
from compressc.ir.interp_stages import Lanes, Memory
from compressc.ir.kd import Node, program
from compressc.specs.target import WARP


class GridError(RuntimeError):
    """The row loop did something the emitted kernel must never do."""


@dataclass
class Cta:
    """One CTA (one cluster, for a clustered grid) walking the program."""

    block: int  # its index in the launch (the cluster's, for clusters)
    grid: int  # CTAs launched
    guard: Callable[[int, Op], Lanes | None]  # (row, guard op): the row's lanes if it is active
    run_row: Callable[[Lanes], None]
    num_rows: int
    module: Module
    mem: Memory
    env: dict[str, int] = field(default_factory=dict)
    lanes: Lanes | None = None
    ranks: int = 1  # the CTAs of a row (kd.split_rank, kd.cluster_rank): simulated as one, rank by rank
    stage: StageSmem | None = None  # its dynamic smem, once a staged window's pipeline starts


def run_program(module: Module, mem: Memory, grid: int,
                guard: Callable[[int, Op], Lanes | None]) -> list[int]:
    """Run the module's program on every CTA of a `grid`-CTA launch; the rows it ran."""
    done: list[int] = []
    seen: set[int] = set()

    def run_row(lanes: Lanes) -> None:
        if lanes.row in seen:
            raise GridError(f"row {lanes.row} ran twice")
        done.append(lanes.row)
        seen.add(lanes.row)
        run_row_ops(lanes)

    nodes = program(module)
    cluster = _cluster(nodes)
    num_rows = mem.scalar("num_rows")
    for block in range(grid // cluster):
        _walk(nodes, Cta(block, grid, guard, run_row, num_rows, module, mem))
    # every guard op of a program carries the build's bounds checks: a row they refuse is not active
    checks = next(op for op in module.ops if op.name in ("kd.guard", "kd.ballot", "kd.sweeps"))
    missed = [row for row in range(num_rows) if row not in seen and guard(row, checks) is not None]
    if missed:
        raise GridError(f"{len(missed)} active row(s) never ran, first {missed[:5]}: the row loop "
                        f"does not cover the {grid}-CTA launch")
    return done


def _cluster(nodes: tuple[Node, ...]) -> int:
    for node in nodes:
        if node.op.name == "kd.cta_index":
            return int(node.op.attr("cluster"))  # type: ignore[arg-type]
    return 1


def _walk(nodes: tuple[Node, ...], cta: Cta) -> None:
    for node in nodes:
        _RUN[node.op.name](node, cta)


def _guard(node: Node, cta: Cta) -> None:
    row = cta.env["row"]
    if not 0 <= row < cta.num_rows:
        raise GridError(f"{node.op.name} reads the metadata of row {row}, outside the {cta.num_rows} "
                        "launched")
    cta.lanes = cta.guard(row, node.op)


def _row(node: Node, cta: Cta) -> None:
    if cta.lanes is None or cta.lanes.row != cta.env["row"]:
        raise GridError(f"kd.row ran row {cta.env['row']}, which its guard did not find active")
    if cta.stage is not None:  # the staged window reads this row's slot
        cta.lanes.stage, cta.lanes.regs["stg"] = cta.stage, cta.env["stg"]
    cta.lanes.cluster = cta.ranks
    cta.run_row(cta.lanes)


def _ballot(node: Node, cta: Cta) -> None:
    base, count = cta.env[str(node.op.attr("base"))], cta.env[str(node.op.attr("count"))]
    cta.env["todo"] = _todo(cta, base, count, node.op)


def _todo(cta: Cta, base: int, count: int, guard: Op) -> int:
    """Lane i's bit: row base + i is active (lanes past `count` or the launch vote no)."""
    todo = 0
    for lane in range(min(WARP, count)):
        row = base + lane
        if row < cta.num_rows and cta.guard(row, guard) is not None:
            todo |= 1 << lane
    return todo


def _span(cta: Cta, ctas: int) -> None:
    cta.env["ctas"] = ctas
    cta.env["per_cta"] = -(-cta.num_rows // ctas)
    cta.env["row0"] = cta.env["cta"] * cta.env["per_cta"]


def _runs_span(node: Node, cta: Cta) -> None:
    cta.env["cta"] = cta.block
    _span(cta, cta.grid)


def _cta_index(node: Node, cta: Cta) -> None:
    cluster = int(node.op.attr("cluster"))  # type: ignore[arg-type]
    cta.env["cta"], cta.env["ctas"] = cta.block, cta.grid // cluster


def _tiled_span(node: Node, cta: Cta) -> None:
    _span(cta, cta.env["ctas"])


def _one_row_per_cta(node: Node, cta: Cta) -> None:
    if cta.env["ctas"] >= cta.num_rows:
        cta.env["row"] = cta.env["cta"]
        _walk(node.body, cta)
    else:
        _walk(node.orelse, cta)


def _if_active(node: Node, cta: Cta) -> None:
    if cta.lanes is not None:
        _walk(node.body, cta)


def _unrolled_rows(node: Node, cta: Cta) -> None:
    for i in range(int(node.op.attr("rows"))):  # type: ignore[arg-type]
        cta.env["i"] = i
        _walk(node.body, cta)


def _if_todo_bit(node: Node, cta: Cta) -> None:
    if (cta.env["todo"] >> cta.env["i"]) & 1:
        _walk(node.body, cta)


def _set_row(node: Node, cta: Cta) -> None:
    op = node.op
    warp = cta.env[str(op.attr("warp"))] * WARP if op.attr("warp") else 0
    cta.env["row"] = cta.env[str(op.attr("base"))] + warp + cta.env[str(op.attr("index"))]


def _blocks32(node: Node, cta: Cta) -> None:
    per_cta = cta.env["per_cta"]
    for blk in range(-(-per_cta // WARP)):
        cta.env["blk0"] = cta.env["row0"] + blk * WARP
        cta.env["n"] = min(per_cta - blk * WARP, WARP)
        _walk(node.body, cta)


def _ballot_rows(node: Node, cta: Cta) -> None:
    for i in range(cta.env["n"]):
        cta.env["i"] = i
        _walk(node.body, cta)


def _bits(todo: int) -> list[int]:
    return [i for i in range(WARP) if (todo >> i) & 1]


def _stage_pipeline(node: Node, cta: Cta) -> None:
    if cta.stage is None:
        cta.stage = StageSmem.of(int(cta.module.get("smem_dynamic")))  # type: ignore[arg-type]
    cta.env["rem"] = cta.env["todo"]


def _stage_issue(node: Node, cta: Cta) -> None:
    """The next active row's window into its slot: the first row's before the loop (slot
    `slot`), row k + 1's inside it (this row's slot `stg` + `slot`, of 2)."""
    op, env = node.op, cta.env
    first = op.attr("row") == "first"
    if not (env["rem"] != 0 if first else env["more"]):
        return
    slot = int(op.attr("slot")) if first else (env["stg"] + int(op.attr("slot"))) % env["slots"]  # type: ignore[arg-type]
    assert cta.stage is not None, "kd.stage_pipeline starts the pipeline"
    issue(cta.stage, cta.mem, op, env["blk0"] + _bits(env["rem"])[0], slot)


def _staged_rows(node: Node, cta: Cta) -> None:
    """The block's active rows lowest bit first, as the pipeline pops them: row k's slot is k % slots."""
    env, slots = cta.env, int(node.op.attr("slots"))  # type: ignore[arg-type]
    env["slots"] = slots
    for k in range(len(_bits(env["todo"]))):
        env["st_i"] = _bits(env["rem"])[0]
        env["rem"] &= env["rem"] - 1
        env["stg"], env["more"] = k & (slots - 1), int(env["rem"] != 0)
        _walk(node.body, cta)


def _staged_wait(node: Node, cta: Cta) -> None:
    assert cta.stage is not None
    cta.stage.wait(int(node.op.attr("in_flight")) if cta.env["more"] else 0)  # type: ignore[arg-type]


def _sweeps(node: Node, cta: Cta) -> None:
    warps = int(node.op.attr("warps"))  # type: ignore[arg-type]
    span, row0, per_cta = WARP * warps, cta.env["row0"], cta.env["per_cta"]
    for sweep in range(-(-per_cta // span)):
        sw0 = row0 + sweep * span
        masks = [_todo(cta, sw0 + w * WARP, row0 + per_cta - (sw0 + w * WARP), node.op) for w in range(warps)]
        cta.env["sw0"] = sw0
        for w, todo in enumerate(masks):
            cta.env["sw_w"] = w
            for i in _bits(todo):
                cta.env["sw_i"] = i
                _walk(node.body, cta)


def _cta_row(node: Node, cta: Cta) -> None:
    cta.env["row"] = cta.block


def _row_groups(node: Node, cta: Cta) -> None:
    """A fused kernel's narrower part (docs/kernels.md §12): group g of the CTA runs rows
    cta + grid * (g + groups * k), k = 0, 1, ..., as kernels/fused.py emits it."""
    groups = int(node.op.attr("groups"))  # type: ignore[arg-type]
    for k in range(-(-cta.num_rows // (cta.grid * groups))):
        for g in range(groups):
            row = cta.block + cta.grid * (g + groups * k)
            if row < cta.num_rows:
                cta.env["row"] = row
                _walk(node.body, cta)


def _ranks(node: Node, cta: Cta) -> None:
    """A row's `ctas` CTAs (a cluster's, or c128a_split's consecutive blocks) are simulated as one:
    thread rank * threads + tidx of the row body is rank's thread tidx, for rank < ctas
    (compressc/ir/interp_window.py), and each rank's smem a row of the CTA's (interp_row.py)."""
    cta.ranks = int(node.op.attr("ctas"))  # type: ignore[arg-type]


def _nothing(node: Node, cta: Cta) -> None:
    """Launch order, barriers and operand loads change no byte a CTA writes."""


_RUN: dict[str, Callable[[Node, Cta], None]] = {
    "kd.lanes": _nothing,
    "kd.split_rank": _ranks,
    "kd.cluster_rank": _ranks,
    "kd.stage_smem": _nothing,
    "kd.static_smem": _nothing,
    "kd.trigger_dependents": _nothing,
    "kd.grid_wait": _nothing,
    "kd.cta_sync": _nothing,
    "kd.operand_loads": _nothing,
    "kd.cta_row": _cta_row,
    "kd.guard": _guard,
    "kd.if_active": _if_active,
    "kd.row": _row,
    "kd.runs_span": _runs_span,
    "kd.ballot": _ballot,
    "kd.unrolled_rows": _unrolled_rows,
    "kd.if_todo_bit": _if_todo_bit,
    "kd.set_row": _set_row,
    "kd.cta_index": _cta_index,
    "kd.one_row_per_cta": _one_row_per_cta,
    "kd.tiled_span": _tiled_span,
    "kd.blocks32": _blocks32,
    "kd.ballot_rows": _ballot_rows,
    "kd.sweeps": _sweeps,
    "kd.stage_pipeline": _stage_pipeline,
    "kd.stage_issue": _stage_issue,
    "kd.staged_rows": _staged_rows,
    "kd.staged_wait": _staged_wait,
    "kd.row_groups": _row_groups,
}
