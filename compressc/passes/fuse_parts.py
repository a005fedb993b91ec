"""fuse-parts: one kernel from the lowered parts of a fused module (docs/kernels.md §12).

The parts of a `csa` module are lowered one by one, each by its own pipeline (the text
`P_main | P_indexer`; `PerPart` runs it), then `fuse-parts` makes them one kernel:

- one CTA size, the widest part's (the main C4A: 256 threads on the tuned schedule);
- a narrower part (the indexer: one warp a row) runs `threads / its threads` row groups per
  CTA, each owning its own launched rows: its `kd.cta_row` becomes `kd.row_groups`. That
  needs a part that synchronises nothing across its warps (no shared memory, `grid=rows`);
- the CTAs of part i are the row y = i of a two-row grid, as wide as the main part's grid
  rule gives for T (`kd.part_index`, `kd.if_part`, `kd.call_part`). The main part then
  reads its CTA index and count from x exactly as alone; the row groups loop over their rows
  grid-stride, so any width covers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from compressc.ir.core import Module, Op, fields
from compressc.ir.fused import is_fused, part_modules, strip_program, with_parts
from compressc.ir.kd import is_program_op
from compressc.ir.schedule import Schedule
from compressc.passes.base import ModulePass
from compressc.specs.csa import PART_NAMES

SEPARATOR = " | "
END = Op("kd.end")


def _kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def row_groups(parts: tuple[Module, ...]) -> tuple[int, ...]:
    """Row groups per CTA of each lowered part: the fused CTA's threads over the part's."""
    threads = max(Schedule.of(p).threads for p in parts)
    return tuple(threads // Schedule.of(p).threads for p in parts)


def fusion_problem(part: Module, groups: int, threads: int) -> str | None:
    """Why `part` cannot run `groups` row groups in a CTA of `threads`, or None."""
    sched = Schedule.of(part)
    if groups == 1:
        return None
    if threads % sched.threads or sched.threads % 32:
        return f"its {sched.threads} threads are not whole warps dividing the fused CTA's {threads}"
    if sched.grid != "rows" or sched.smem_bytes or sched.smem_dynamic or sched.split > 1:
        return (
            f"a part with fewer threads than the CTA ({sched.threads} < {threads}) runs several rows a "
            "CTA, one per row group: it needs grid=rows and no shared memory (run thread-map{grid=rows})"
        )
    return None


def part_program(part: Module, groups: int) -> tuple[Op, ...]:
    """A lowered part's kd program inside the fused kernel: as lowered, or with row groups."""
    ops = tuple(op for op in part.ops if is_program_op(op))
    if groups == 1:
        return ops
    cut = next(i for i, op in enumerate(ops) if op.name == "kd.cta_row")
    sched = Schedule.of(part)
    rows = _kd("row_groups", groups=groups, head_lanes=sched.head_lanes, elems=sched.elems)
    return ops[:cut] + (rows,) + ops[cut + 1 :] + (END,)


def dispatch_program() -> tuple[Op, ...]:
    """The fused kernel's own program: CTA row y runs part y."""
    ops = [_kd("part_index")]
    for i, name in enumerate(PART_NAMES):
        ops += [_kd("if_part", index=i), _kd("call_part", part=name), END]
    return tuple(ops)


@dataclass(frozen=True, slots=True)
class FuseParts(ModulePass):
    """Make one kernel of a fused module whose parts are lowered.

    Expects: a fused module (`cc.part` bodies) whose every part ends with its kd program
             (each part's pipeline has run; `PerPart` runs them, then this).
    Leaves:  narrower parts' `kd.cta_row` replaced by `kd.row_groups {groups, head_lanes,
             elems}`; the dispatch program after the parts; module sched `threads` (the CTA)
             and `parts`. No options.
    """

    name: ClassVar[str] = "fuse-parts"

    def apply(self, module: Module) -> Module:
        if not is_fused(module):
            raise ValueError(f"fuse-parts needs a fused module (kernel csa), got @{module.name}")
        module = strip_program(module)
        lowered = part_modules(module)
        unlowered = [p.name for p in lowered if p.find("kd.lanes") is None]
        if unlowered:
            raise ValueError(f"fuse-parts needs lowered parts; {', '.join(unlowered)} has no kd program")
        groups = row_groups(lowered)
        threads = max(Schedule.of(p).threads for p in lowered)
        for part, g in zip(lowered, groups, strict=True):
            problem = fusion_problem(part, g, threads)
            if problem:
                raise ValueError(f"part {part.name}: {problem}")
        fused_parts = tuple(
            replace(p, ops=tuple(op for op in p.ops if not is_program_op(op)) + part_program(p, g))
            for p, g in zip(lowered, groups, strict=True)
        )
        out = with_parts(module, fused_parts)
        return replace(out, ops=out.ops + dispatch_program()).with_sched(threads=threads, parts=len(lowered))


@dataclass(frozen=True, slots=True)
class PerPart(ModulePass):
    """Lower each part of a fused module by its own pipeline, then fuse-parts.

    Written `P_0 | P_1` in a pipeline string (one pipeline per part, in part order); not
    named on its own. Its spelling is each part's canonical pipeline joined by ` | `.
    """

    name: ClassVar[str] = "per-part"
    pipelines: tuple[tuple[ModulePass, ...], ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> PerPart:
        from compressc.passes.manager import parse_pipeline

        return cls(tuple(tuple(parse_pipeline(piece)) for piece in text.split("|")))

    def spelling(self) -> str:
        from compressc.passes.manager import pipeline_string

        return SEPARATOR.join(pipeline_string(list(p)) for p in self.pipelines)

    def apply(self, module: Module) -> Module:
        from compressc.passes.manager import PassManager

        if not is_fused(module):
            raise ValueError(
                f"a pipeline with '|' lowers the parts of a fused module; @{module.name} has none"
            )
        parts = part_modules(strip_program(module))
        if len(parts) != len(self.pipelines):
            raise ValueError(
                f"@{module.name} has {len(parts)} parts and the pipeline {len(self.pipelines)} "
                "pipelines (one per part, separated by '|')"
            )
        lowered = tuple(PassManager(list(p)).run(part) for p, part in zip(self.pipelines, parts, strict=True))
        if any(p.find("kd.lanes") is None for p in lowered):
            return with_parts(strip_program(module), lowered)  # a partial pipeline: not fused yet
        return FuseParts().apply(with_parts(module, lowered))


def _one_warp_rows(thread_map, head: int):
    """A narrower part's thread map: a row per warp (its head in one warp's lanes), grid=rows."""
    elems = thread_map.elems_per_lane
    if elems and elems * 32 < head:  # e.g. the baseline's 2 a lane: 64 lanes, a cross-warp exchange
        elems = head // 32
    return replace(thread_map, grid="rows", elems_per_lane=elems)


def resolve_parts(text: str, module: Module, arch: str | None, tuned=None) -> str:
    """`P_main | P_indexer` for a fused module: each part's own resolution of its piece (a
    named pipeline such as "default" is each part's tuned schedule); a single pipeline is
    every part's. A narrower part runs grid=rows unless its piece was given apart."""
    from compressc.passes.manager import parse_pipeline, pipeline_string, resolve_pipeline
    from compressc.passes.thread_map import ThreadMap

    pieces = text.split("|") if "|" in text else None
    parts = part_modules(strip_program(module))
    if pieces is not None and len(pieces) != len(parts):
        raise ValueError(f"@{module.name} has {len(parts)} parts; the pipeline gives {len(pieces)}")
    out = []
    for i, part in enumerate(parts):
        passes = parse_pipeline(resolve_pipeline(pieces[i] if pieces else text, part, arch, tuned))
        if pieces is None and i > 0:  # the indexer: one warp a row, several rows a CTA
            passes = [
                _one_warp_rows(p, int(part.attr("head"))) if isinstance(p, ThreadMap) else p  # type: ignore[arg-type]
                for p in passes
            ]
        out.append(pipeline_string(passes))
    return SEPARATOR.join(out)
