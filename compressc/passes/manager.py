"""Pipeline strings, the explicit list of passes, and the pass manager.

A pipeline string is `pass{opt=value,opt=value},pass,...` (MLIR's textual form).
The manager verifies after every pass and can print or time each stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from compressc.ir.core import Module
from compressc.ir.printer import print_module
from compressc.ir.verifier import verify
from compressc.passes.base import ModulePass
from compressc.passes.cache_hints import CacheHints
from compressc.passes.l2_prefetch import L2Prefetch
from compressc.passes.lower_grid import LowerGrid
from compressc.passes.lower_reduction import LowerReduction
from compressc.passes.lower_row import LowerRow
from compressc.passes.occupancy import Occupancy
from compressc.passes.operand_loads import OperandLoads
from compressc.passes.overlap_launch import OverlapLaunch
from compressc.passes.page_lookup import PageLookup
from compressc.passes.plan_smem import PlanSmem
from compressc.passes.quant_convert import QuantConvert
from compressc.passes.rescale import Rescale
from compressc.passes.rows_in_flight import RowsInFlight
from compressc.passes.smem_stage import SmemStage
from compressc.passes.thread_map import ThreadMap
from compressc.passes.tuned import Table, tuned_entry
from compressc.passes.vectorize import Vectorize
from compressc.passes.window_prefetch import WindowPrefetch
from compressc.specs.target import TARGETS

# in pipeline order: each window pass after the decisions it builds on (docs/pipeline.md §6)
ALL_PASSES: tuple[type[ModulePass], ...] = (
    ThreadMap, Vectorize, LowerReduction, PlanSmem,
    RowsInFlight, PageLookup, Rescale, SmemStage, L2Prefetch, OperandLoads, Occupancy, CacheHints,
    OverlapLaunch, QuantConvert, LowerRow, LowerGrid,
)
PASSES_BY_NAME = {p.name: p for p in ALL_PASSES}
# the lowering to the kernel dialect: no options, run at the end of every pipeline
FINAL_LOWERING = (LowerRow, LowerGrid)
# names that expand into several passes at parse time (old pipeline strings keep parsing)
ALIASES = {WindowPrefetch.name: WindowPrefetch}

# the window's default fetch: what `window-prefetch` with no options expands to
DEFAULT_FETCH = "rows-in-flight,page-lookup,rescale,operand-loads,occupancy,cache-hints,overlap-launch"
DEFAULT_PIPELINE = f"thread-map,vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
# The schedule a straightforward port would use: 2 fp32 per thread (more only where a
# quant group would not fit one warp), scalar loads, one row at a time, its operands loaded
# where used, no cache hints, no launch overlap (a CTA per row: no occupancy hint either).
BASELINE_PIPELINE = (
    "thread-map{elems-per-lane=2,window-split=1,grid=rows},vectorize{bits=32},"
    "lower-reduction,plan-smem,rows-in-flight{rows=1},page-lookup{by=row},rescale{per=row},"
    "operand-loads{at=late}"
)
# "default" is the tuned winner of (variant, arch) when passes/tuned.json has one (see
# resolve_pipeline), else the derived default; "derived" is always the derived default.
NAMED_PIPELINES = {"default": DEFAULT_PIPELINE, "derived": DEFAULT_PIPELINE, "baseline": BASELINE_PIPELINE}


def resolve_pipeline(text: str, module: Module, arch: str | None = None, tuned: Table | None = None) -> str:
    """Expand a named pipeline for `module`; other strings are returned unchanged.

    "default" is the pipeline `compressc tune` measured fastest for (module's variant,
    `arch`) when the tuned table (`tuned`, else passes/tuned.json) has one; without an
    entry or an arch it is the derived default, which "derived" always names. A fused
    module's pipeline is one per part (`compressc.passes.fuse_parts.resolve_parts`).
    """
    if module.attr("kernel") == "csa":
        from compressc.passes.fuse_parts import resolve_parts

        return resolve_parts(text, module, arch, tuned)
    if text.strip() == "default":
        entry = tuned_entry(module.name, arch, tuned, inherit=format_sibling(module))
        return _for_target(str(entry["pipeline"]) if entry is not None else DEFAULT_PIPELINE, module, arch)
    if text.strip() == "baseline":
        # 2 a lane, more where a quant block (or a rotation's butterfly) would leave one warp
        rotates = module.find("cc.hadamard") is not None
        spread = int(module.attr("head" if rotates else "quant_block"))  # type: ignore[arg-type]
        elems = max(2, spread // 32)
        baseline = BASELINE_PIPELINE.replace("elems-per-lane=2", f"elems-per-lane={elems}")
        return _for_target(baseline, module, arch)
    return _for_target(NAMED_PIPELINES.get(text.strip(), text), module, arch)


def format_sibling(module: Module) -> str | None:
    """The variant whose tuned schedule `module` inherits: the same kernel, head, quant block,
    rope and weight in the kernel's first cache format, unrotated (None: it is that one)."""
    plain = not module.attr("rotate", False) and not module.attr("bounds")  # bounds: the checked build
    if module.attr("cache_format") is None and plain:
        return None
    from compressc.ir.from_spec import spec_from_module

    spec = spec_from_module(module)
    return spec.with_(cache_format="", rotate=False, bounds=False).variant


def _for_target(pipeline: str, module: Module, arch: str | None) -> str:
    """A pipeline plus the target's decisions it leaves out: an e2m1 quantisation converts
    in hardware where the target has the instruction (sm_100a), in software elsewhere (and
    without an arch). A pipeline that names quant-convert keeps its own choice."""
    if "quant-convert" in pipeline or not any(op.attr("codec") == "e2m1" for op in module.iter("cc.quant")):
        return pipeline
    target = TARGETS.get(arch or "")
    hardware = target is not None and target.hw_e2m1
    return pipeline + (",quant-convert{e2m1=hw}" if hardware else ",quant-convert")


class PipelineError(ValueError):
    """A pipeline string names an unknown pass or option; the message gives the column."""


def _fail(text: str, pos: int, what: str) -> PipelineError:
    return PipelineError(f"pipeline column {pos + 1}: {what}\n  {text}\n  {' ' * pos}^")


def _split_top(text: str) -> list[tuple[int, str]]:
    """Split at commas outside braces, keeping each piece's start column."""
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            raise _fail(text, i, "'}' without a matching '{'")
        if ch == "," and depth == 0:
            pieces.append((start, text[start:i]))
            start = i + 1
    if depth:  # without this check an unclosed brace would swallow the rest and run nothing
        raise _fail(text, text.rfind("{"), "'{' is never closed")
    return pieces


def _convert(value: str, kind: type) -> object:
    if kind is bool:
        if value not in ("true", "false"):
            raise ValueError("expected true or false")
        return value == "true"
    return kind(value)


def _make_passes(text: str, pos: int, piece: str) -> list[ModulePass]:
    """The pass `piece` names, or the passes an alias (window-prefetch) expands to."""
    name, _, opts = piece.strip().partition("{")
    cls = PASSES_BY_NAME.get(name.strip()) or ALIASES.get(name.strip())
    if cls is None:
        raise _fail(text, pos, f"unknown pass {name.strip()!r}; passes: {', '.join(PASSES_BY_NAME)} "
                               f"(alias: {', '.join(ALIASES)})")
    if opts and not opts.endswith("}"):
        raise _fail(text, pos, f"options of {name!r} must end with '}}'")
    known = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for item in filter(None, opts[:-1].split(",")):
        key, eq, value = item.partition("=")
        f, where = known.get(key.strip()), pos + piece.find(item)
        if f is None:
            options = ", ".join(known) or "none"
            raise _fail(text, where, f"unknown option {key.strip()!r} of {name}; options: {options}")
        if not eq:
            raise _fail(text, where, f"option {key.strip()!r} of {name} needs a value: {key.strip()}=...")
        try:
            kwargs[f.name] = _convert(value.strip(), type(f.default))
        except ValueError:
            raise _fail(text, pos + piece.find(item), f"bad value {value!r} for {key}") from None
    try:  # a pass (or a pass the alias expands to) rejecting its option values
        made = cls(**kwargs)
        return made.expand() if isinstance(made, WindowPrefetch) else [made]
    except ValueError as err:
        raise _fail(text, pos, f"bad options of {name.strip()}: {err}") from None


def parse_pipeline(text: str) -> list[ModulePass]:
    """Parse `a,b{x=1}` (or a named pipeline: default/derived, baseline) into pass objects;
    the alias `window-prefetch{...}` becomes the window passes it stands for.

    Here "default" is the derived default: the tuned choice needs a module and an arch
    (`resolve_pipeline`).
    """
    text = NAMED_PIPELINES.get(text.strip(), text)
    if "|" in text:  # one pipeline per part of a fused module (compressc.passes.fuse_parts)
        from compressc.passes.fuse_parts import PerPart

        return [PerPart.parse(text)]
    if not text.strip():
        return []
    return [p for pos, piece in _split_top(text) for p in _make_passes(text, pos, piece)]


def pipeline_string(passes: list[ModulePass]) -> str:
    """The canonical spelling: what the cache key and manifest record. lower-row and lower-grid
    are left out: every pipeline that schedules the window ends with them (`with_final_lowering`),
    and they have no options, so naming them changes no byte."""
    return ",".join(p.spelling() for p in passes if not isinstance(p, FINAL_LOWERING))


def with_final_lowering(passes: list[ModulePass]) -> list[ModulePass]:
    """`passes`, then lower-grid where they complete the schedule (plan-smem and
    rows-in-flight) and do not lower the grid themselves: the row loop is always the kernel
    dialect's."""
    kinds = {type(p) for p in passes}
    if LowerGrid in kinds or not {RowsInFlight, PlanSmem} <= kinds:
        return list(passes)
    return [*passes, LowerGrid()]


def input_header(passes: list[ModulePass]) -> str:
    """MLIR's dump header for a pipeline's input: "IR Dump Before <first pass>"."""
    first = passes[0].spelling() if passes else "an empty pipeline (no passes)"
    return f"// -----// IR Dump Before {first} //----- //"


@dataclass
class PassManager:
    """Run passes in order, verifying after each; optionally print or time them."""

    passes: list[ModulePass]
    print_after_all: bool = False
    print_after_change: bool = False
    time_passes: bool = False
    out: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, module: Module) -> Module:
        verify(module)
        if self.print_after_all:  # the input first (the spec IR), so every stage is on screen
            self.out(f"{input_header(self.passes)}\n{print_module(module)}")
        for p in with_final_lowering(self.passes):
            start = time.perf_counter()
            try:
                applied = p.apply(module)
            except PipelineError:
                raise
            except ValueError as err:  # a pass that cannot lower this module with its options
                raise PipelineError(f"{p.spelling()} cannot lower @{module.name}: {err}") from err
            new = verify(applied)
            self.timings.append((p.spelling(), time.perf_counter() - start))
            if self.print_after_all or (self.print_after_change and new != module):
                self.out(f"// -----// IR Dump After {p.spelling()} //----- //\n{print_module(new)}")
            module = new
        if self.time_passes:
            self.out(self.timing_report())
        return module

    def timing_report(self) -> str:
        total = sum(t for _, t in self.timings) or 1e-12
        lines = ["// ----- Pass execution timing report ----- //"]
        lines += [f"  {t * 1e3:8.3f} ms ({100 * t / total:5.1f}%)  {name}" for name, t in self.timings]
        return "\n".join(lines)
