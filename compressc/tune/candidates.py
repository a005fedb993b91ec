"""The schedules `compressc tune` measures for one variant: legal, distinct, at most --limit.

Where a pass has a choice (thread-map elems-per-lane and window-split, rows-in-flight
rows, thread-map grid, the window passes present) a pipeline string picks it. The list always starts with the
derived default and the baseline (and the current tuned entry, if any), then the rows
in flight around the derived schedule, then one CTA per row instead of the tiled grid,
then the (elems-per-lane, window-split) grid nearest the derived schedule first (the
tuned and derived schedules also with the softmax rescaled row by row, early), and
last, for a tiled window kernel (C128A compress), the window prefetched into L2 page by
page and the window pooled by clusters of CTAs. c128a_split (C128A in one launch,
docs/kernels.md §13) has its own list after the first three (`split_proposals`). Every
proposal is lowered and verified; illegal ones are skipped, and two proposals that
lower to the same IR are one candidate (the first spelling wins).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import product

from compressc.ir.core import Module
from compressc.ir.from_spec import module_from_spec
from compressc.ir.printer import print_module
from compressc.ir.verifier import VerifyError
from compressc.passes.manager import (
    DEFAULT_FETCH,
    DEFAULT_PIPELINE,
    PassManager,
    PipelineError,
    parse_pipeline,
    pipeline_string,
    resolve_pipeline,
)
from compressc.passes.rescale import Rescale
from compressc.specs.family import KernelSpec

MAX_CANDIDATES = 40  # c128a_split proposes 38 (the others at most 31)
ELEMS_PER_LANE = (2, 4, 8)
WINDOW_SPLIT = (1, 2, 4)
PREFETCH_ROWS = (1, 2, 4, 8)
TAIL = "vectorize{bits=128},lower-reduction,plan-smem"
# the derived window passes with one decision changed: the window staged in smem (read back
# row by row), prefetched into L2, or without the .minnctapersm occupancy hint
STAGED = DEFAULT_FETCH.replace("rescale,", "rescale{per=row},smem-stage,")
L2_PREFETCHED = DEFAULT_FETCH.replace("rescale,", "rescale,l2-prefetch,")
NO_OCCUPANCY = DEFAULT_FETCH.replace("occupancy,", "")
L2_MAPS = ((4, 4), (8, 4), (2, 4))  # (elems per lane, window split) with 32-row groups: lane lookups
CLUSTER_SPLIT = (2, 4, 8)
# (elems per lane, window split, rows in flight) tried with each cluster split: the DSMEM
# merge's generic stores cost about 30 registers, so fewer rows in flight or lanes per thread
CLUSTER_MAPS = ((2, 4, 8), (4, 2, 4), (4, 4, 4), (2, 2, 8))
# c128a_split: the CTAs that pool one row (grid-split, or cluster-split for a cluster; 16 is not
# legal: the workspace holds SPLIT_MAX = 8 partials a row, specs/abi.py, and 8 is the largest
# portable cluster) and the lanes of each CTA, (elems per lane, window split) nearest the derived
# (4, 2) first; 8 channels a lane spill with the store epilogue
SPLIT_GRIDS = (8, 4)
SPLIT_LANES = ((4, 2), (4, 1), (4, 4), (2, 2), (2, 1), (2, 4))
SCHEDULE_FIELDS = ("elems_per_lane", "window_split", "threads", "grid", "rows_per_cta", "ctas_per_sm",
                   "min_ctas_per_sm", "cluster_split", "split_merge", "rows_in_flight")


@dataclass(frozen=True)
class Candidate:
    """One schedule of a variant: its canonical pipeline and where it came from."""

    pipeline: str
    origin: str  # "derived" | "baseline" | "tuned" | "search"
    schedule: dict = field(default_factory=dict, compare=False)

    @property
    def summary(self) -> str:
        s = self.schedule
        text = f"e{s.get('elems_per_lane')} x{s.get('window_split')} {s.get('threads')}t"
        text += f" r{s['rows_in_flight']}" if s.get("rows_in_flight") else ""
        if s.get("grid") == "runs":
            text += f" runs{s.get('rows_per_cta')}"
        elif s.get("grid") == "tiled":
            text += f" tiled{s.get('ctas_per_sm')}"
        else:
            text += " rows"
        text += f" occ{s['min_ctas_per_sm']}" if s.get("min_ctas_per_sm") else ""
        if s.get("cluster_split"):
            text += f" {'split' if s.get('split_merge') == 'global' else 'cluster'}{s['cluster_split']}"
        text += " l2pf" if s.get("l2_prefetch") else ""
        text += " byrow" if s.get("rescale") == "row" else ""
        return text + (" smem" if s.get("stage") == "smem" else "")


def candidates(
    spec: KernelSpec, arch: str, limit: int = MAX_CANDIDATES, tuned: Mapping | None = None
) -> list[Candidate]:
    """At most `limit` legal, distinct schedules of `spec`, the derived default and baseline first."""
    module = module_from_spec(spec)
    seen: dict[str, Candidate] = {}
    for origin, text in proposals(module, arch, tuned):
        text = resolve_pipeline(text, module, arch)  # plus the target's decisions (quant-convert)
        lowered = _lower(module, text)
        if lowered is None or print_module(lowered) in seen:
            continue
        canonical = pipeline_string(parse_pipeline(text))
        seen[print_module(lowered)] = Candidate(canonical, origin, schedule_of(lowered))
        if len(seen) == limit:
            break
    return list(seen.values())


def proposals(module: Module, arch: str, tuned: Mapping | None = None) -> Iterator[tuple[str, str]]:
    """(origin, pipeline) in priority order; may be illegal or repeat a schedule."""
    yield "derived", DEFAULT_PIPELINE
    yield "baseline", resolve_pipeline("baseline", module)
    current = resolve_pipeline("default", module, arch, tuned)
    yield "tuned", current
    if module.attr("kernel") == "c128a_split":
        yield from (("search", text) for text in split_proposals())
        return
    derived = PassManager(parse_pipeline(resolve_pipeline(DEFAULT_PIPELINE, module, arch))).run(module)
    windowed = module.find("cc.window") is not None
    if windowed:
        # the same schedules with the softmax rescaled row by row (a longer ex2 count, a
        # shorter dependency chain per row)
        for text in (current, DEFAULT_PIPELINE):
            try:
                yield "search", row_rescale(text)
            except (PipelineError, ValueError):  # a stale tuned entry: nothing to vary
                pass
    if windowed:
        for rows in PREFETCH_ROWS:
            yield "search", f"thread-map,{TAIL},{in_flight(rows)}"
    yield "search", f"thread-map{{grid=rows}},{TAIL},{DEFAULT_FETCH}"
    if derived.get("grid") == "runs":
        run = int(derived.get("rows_per_cta"))  # type: ignore[arg-type]
        for other in (run // 2, run * 2):
            if 1 <= other <= 32:
                yield "search", f"thread-map{{grid=runs,rows-per-cta={other}}},{TAIL},{DEFAULT_FETCH}"
        yield "search", f"thread-map{{grid=runs}},{TAIL},{NO_OCCUPANCY}"
        yield "search", f"thread-map{{grid=tiled}},{TAIL},{DEFAULT_FETCH}"
        for elems in (8, 4):  # the window staged in smem, pipelined across a CTA's rows
            yield "search", f"thread-map{{grid=tiled,elems-per-lane={elems}}},{TAIL},{STAGED}"
    tiled = derived if derived.get("grid") == "tiled" else _lower(module, f"thread-map{{grid=tiled}},{TAIL}")
    per_sm = int(tiled.get("ctas_per_sm") or 0) if tiled is not None else 0  # type: ignore[arg-type]
    for fewer in (per_sm // 4, per_sm // 2):  # longer runs of rows per CTA
        if fewer >= 1:
            yield "search", f"thread-map{{ctas-per-sm={fewer}}},{TAIL},{DEFAULT_FETCH}"
    elems, split = derived.get("elems_per_lane"), derived.get("window_split")
    grid = product(ELEMS_PER_LANE, WINDOW_SPLIT if windowed else (1,))
    for e, w in sorted(grid, key=lambda ew: ((ew[0] != elems) + (ew[1] != split), -ew[0], ew[1])):
        options = f"elems-per-lane={e}" + (f",window-split={w}" if windowed else "")
        yield "search", f"thread-map{{{options}}},{TAIL},{DEFAULT_FETCH}"
    if derived.get("grid") == "tiled" and windowed:
        # a long window (C128): each page's run of rows prefetched into L2 up front
        for e, w in L2_MAPS:
            yield "search", f"thread-map{{elems-per-lane={e},window-split={w}}},{TAIL},{L2_PREFETCHED}"
        # a long window (C128) pooled by a cluster of CTAs on as many SMs
        for cluster, (e, w, rows) in product(CLUSTER_SPLIT, CLUSTER_MAPS):
            yield "search", (f"thread-map{{elems-per-lane={e},window-split={w},cluster-split={cluster}}},"
                             f"{TAIL},{in_flight(rows)}")


def split_proposals() -> Iterator[str]:
    """c128a_split's schedules: each grid split x lanes, with and without the occupancy hint
    (2 CTAs per SM), then the derived lanes with the row's CTAs one cluster of 8 or 4 (the DSMEM
    merge, no workspace: docs/kernels.md §13), with and without the hint, then the derived lanes
    at each grid split with the softmax rescaled row by row (with and without the hint), 4 rows
    in flight (2 batches a split group) and the window's pages prefetched into L2, and last 2
    CTAs a row."""
    for (e, w), split, fetch in product(SPLIT_LANES, SPLIT_GRIDS, (DEFAULT_FETCH, NO_OCCUPANCY)):
        yield f"thread-map{{elems-per-lane={e},window-split={w},grid-split={split}}},{TAIL},{fetch}"
    for cluster, fetch in product(SPLIT_GRIDS, (DEFAULT_FETCH, NO_OCCUPANCY)):
        yield f"thread-map{{cluster-split={cluster}}},{TAIL},{fetch}"
    by_row = DEFAULT_FETCH.replace("rescale,", "rescale{per=row},")  # spills at 2 CTAs per SM
    for split, fetch in product(SPLIT_GRIDS, (by_row, by_row.replace("occupancy,", ""), in_flight(4),
                                              L2_PREFETCHED)):
        yield f"thread-map{{grid-split={split}}},{TAIL},{fetch}"
    yield f"thread-map{{grid-split=2}},{TAIL},{DEFAULT_FETCH}"


def in_flight(rows: int) -> str:
    """The derived window passes with `rows` window rows in flight."""
    return DEFAULT_FETCH.replace("rows-in-flight", f"rows-in-flight{{rows={rows}}}", 1)


def row_rescale(pipeline: str) -> str:
    """`pipeline` with the softmax rescaled row by row (`rescale{per=row}`)."""
    passes = [replace(p, per="row") if isinstance(p, Rescale) else p for p in parse_pipeline(pipeline)]
    return pipeline_string(passes)


def _lower(module: Module, pipeline: str) -> Module | None:
    """The lowered module, or None when the pipeline is not a legal schedule of it."""
    try:
        return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)
    except (VerifyError, PipelineError):
        return None


def schedule_of(lowered: Module) -> dict:
    """The few schedule fields a tuning table shows."""
    out = {k: lowered.get(k) for k in SCHEDULE_FIELDS[:-1] if lowered.get(k)}
    window = lowered.find("cc.window")
    if window is not None and window.get("rows_in_flight") is not None:
        out["rows_in_flight"] = window.get("rows_in_flight")
    if window is not None and window.get("stage") == "smem":
        out["stage"] = "smem"
    if window is not None and window.get("l2_prefetch"):
        out["l2_prefetch"] = True
    if window is not None and window.get("rescale") == "row":
        out["rescale"] = "row"
    return out
