"""lower-grid: lower the row loop of a scheduled module to the kernel dialect.

The coarse ops (`cc.window` .. `cc.store`) say what one active row computes; this pass
writes the program around them as `kd.*` ops: which rows a CTA owns under the module's
grid strategy, how their metadata is balloted, which rows run the row body (`kd.row`),
where the CTA synchronises. Ops that open a body are closed by `kd.end` (`kd.else`
splits one in two). The emitter prints each op with one small function and the
interpreter executes them CTA by CTA, so every grid strategy is checked on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from compressc.ir.core import Module, Op, fields
from compressc.ir.kd import is_program_op
from compressc.ir.schedule import Schedule
from compressc.passes.base import ModulePass
from compressc.passes.lower_row import LowerRow, require_scheduled
from compressc.passes.lower_row_window import stage_facts
from compressc.passes.smem_stage import SLOTS

END = Op("kd.end")


def kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class LowerGrid(ModulePass):
    """Write the kernel's row loop as kernel-dialect ops after the row ops.

    Expects: a fully scheduled module (thread-map .. the window passes have run).
    Leaves:  the `kd.*` program appended to the ops; nothing else changes. The build
             runs it last on every pipeline (it has no options), so pipeline strings
             need not name it; `compressc opt` prints its result.
    Grids:   "rows" (one CTA per row); "runs" (a CTA's run of launched rows, unrolled,
             one ballot); "tiled" (one wave of CTAs: a row per CTA while the grid covers
             T, else blocks of 32 rows a ballot, several warps balloting a sweep of 32 x
             warps rows at once; the staged window's software pipeline over a block).
             The online merge (cc.segment): one CTA per segment, `kd.segment` its metadata.
    """

    name: ClassVar[str] = "lower-grid"

    def apply(self, module: Module) -> Module:
        if module.find("kd.lanes") is not None:  # a row loop saved before lower-row: its row body
            return LowerRow().apply(module)
        if module.find("cc.segment") is not None:
            require_scheduled(module, self.name)
            module = LowerRow().apply(module)
            return replace(module, ops=module.ops + tuple(_segments(module)))
        guard = module.find("cc.row_guard")
        if guard is None:
            raise ValueError("lower-grid needs the cc.row_guard op")
        require_scheduled(module, self.name)
        module = LowerRow().apply(module)
        sched = Schedule.of(module)
        body = prologue(module)
        if sched.grid_dependency == "trigger":
            body.append(kd("trigger_dependents"))
        body += _GRIDS[sched.grid](module, int(guard.attr("ratio")))  # type: ignore[arg-type]
        if sched.grid_dependency == "wait":
            body.append(kd("grid_wait"))
        return replace(module, ops=module.ops + tuple(body))


def expected_program(module: Module) -> tuple[Op, ...]:
    """The kd ops lower-grid writes for `module`'s other ops and schedule: the verifier holds
    a module's program to this (the pass has no options, so nothing else is legal)."""
    rest = replace(module, ops=tuple(op for op in module.ops if not op.name.startswith("kd.")))
    return tuple(op for op in LowerGrid().apply(rest).ops if is_program_op(op))


def prologue(module: Module) -> list[Op]:
    """Every thread's lane, split group and first channel; which of a row's CTAs this one is
    (c128a_split's S CTAs of a plain launch: bidx % S; a cluster's: its rank); its smem."""
    sched = Schedule.of(module)
    ops = [kd("lanes", elems=sched.elems, head_lanes=sched.head_lanes, groups=sched.split)]
    if sched.global_split:
        ops.append(kd("split_rank", ctas=sched.global_split))
    elif sched.cluster > 1:
        ops.append(kd("cluster_rank", ctas=sched.cluster))
    ops += [kd("stage_smem", bytes=sched.smem_dynamic)] if sched.smem_dynamic else []
    return ops + ([kd("static_smem", words=sched.smem_bytes // 4)] if sched.smem_bytes else [])


def _segments(module: Module) -> list[Op]:
    """The online merge (docs/kernels.md §9.1): CTA i runs segment i, whatever its fields say."""
    return [*prologue(module), kd("cta_row"), kd("segment"), kd("row", operands=False)]


def _checks(module: Module) -> dict[str, object]:
    """A checked build's bounds checks (its cc.bounds), run by the guard of every row: the
    indices it tests ("" in a plain build), the window rows the state checks span, and whether
    rows before position 0 exist (window > ratio: they read column 0's page)."""
    op = module.find("cc.bounds")
    if op is None:
        return {"checks": "", "window": 0, "absent": False}
    window, ratio = int(op.attr("window")), int(op.attr("ratio"))  # type: ignore[arg-type]
    return {"checks": str(op.attr("checks")), "window": window, "absent": window > ratio}


def _guard(module: Module, ratio: int) -> Op:
    return kd("guard", ratio=ratio, **_checks(module))


def _ballot(module: Module, base: str, count: str, ratio: int) -> Op:
    return kd("ballot", base=base, count=count, ratio=ratio, **_checks(module))


def _row_block(module: Module, ratio: int, **at: object) -> list[Op]:
    """A row a ballot found active: its metadata again, its body, the smem handover."""
    ops = [kd("set_row", **at), _guard(module, ratio), kd("row", operands=True)]
    return ops + ([kd("cta_sync")] if Schedule.of(module).smem_bytes else [])


def _rows(module: Module, ratio: int) -> list[Op]:
    return [kd("cta_row"), _guard(module, ratio), kd("if_active"), kd("row", operands=True), END]


def _runs(module: Module, ratio: int) -> list[Op]:
    run = Schedule.of(module).rows_per_cta
    return [
        kd("runs_span", rows=run),
        _ballot(module, "row0", "per_cta", ratio),
        kd("unrolled_rows", rows=run),
        kd("if_todo_bit"), *_row_block(module, ratio, base="row0", index="i"), END,
        END,
    ]


def _tiled(module: Module, ratio: int) -> list[Op]:
    cluster = Schedule.of(module).cluster
    window = module.find("cc.window")
    staged = window is not None and window.get("stage") == "smem"
    ops = [kd("cta_index", cluster=cluster)]
    if staged:
        return ops + _blocks(module, ratio, staged=True)
    fast = [kd("one_row_per_cta", cluster=cluster), _guard(module, ratio), kd("if_active"),
            kd("row", operands=True), END, kd("else")]
    warps = Schedule.of(module).warps
    loops = _sweeps(module, ratio, warps) if warps > 1 else _blocks(module, ratio, staged=False)
    return ops + fast + loops + [END]


def _blocks(module: Module, ratio: int, staged: bool) -> list[Op]:
    """Blocks of 32 rows, one warp ballot each; the staged window pipelines its rows."""
    ops = [kd("tiled_span"), kd("blocks32"), _ballot(module, "blk0", "n", ratio)]
    if staged:
        return ops + _staged(module, ratio) + [END]
    row = _row_block(module, ratio, base="blk0", index="i")
    rows = [kd("ballot_rows"), kd("if_todo_bit"), *row, END, END]
    return ops + rows + [END]


def _staged(module: Module, ratio: int) -> list[Op]:
    """The staged window's software pipeline over a block's active rows: row k + 1's window
    is copied into the other slot before row k pools from its own (docs/pipeline.md §8)."""
    window = module.find("cc.window")
    assert window is not None
    facts = stage_facts(module, window)
    sync = [kd("cta_sync")] if Schedule.of(module).smem_bytes else []
    return [kd("stage_pipeline"), kd("stage_issue", row="first", slot=0, **facts),
            kd("staged_rows", slots=SLOTS),
            kd("stage_issue", row="next", slot=1, **facts), kd("set_row", base="blk0", index="st_i"),
            _guard(module, ratio), kd("operand_loads"), kd("staged_wait", in_flight=1),
            kd("row", operands=False), *sync, END]


def _sweeps(module: Module, ratio: int, warps: int) -> list[Op]:
    """Every warp ballots its own 32 rows, so one round trip decides 32 x warps rows."""
    row = _row_block(module, ratio, base="sw0", warp="sw_w", index="sw_i")
    return [kd("tiled_span"), kd("sweeps", warps=warps, ratio=ratio, **_checks(module)), *row, END]


_GRIDS = {"rows": _rows, "runs": _runs, "tiled": _tiled}
