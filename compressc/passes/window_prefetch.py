"""window-prefetch: the compatibility alias that spells the window's passes in one.

Before each decision had its own pass, one `window-prefetch` pass took them all as options
(9 options writing 10 fields). Pipeline strings written then (passes/tuned.json, tuning
results, scripts) keep working: the parser expands the alias into the passes below, in this
order, and prints them canonically as those passes (so its cache keys are the new spelling's).

    rows=N              -> rows-in-flight{rows=N}
    page-lookup=L       -> page-lookup{by=L}
    rescale=R           -> rescale{per=R}           (row with stage=smem, as before)
    stage=smem          -> smem-stage               (regs: left out)
    l2-prefetch=true    -> l2-prefetch              (false: left out)
    operands-early=B    -> operand-loads{at=early|late}
    occupancy=B         -> occupancy                (false: left out)
    cache-hints=stream  -> cache-hints              (none: left out)
    overlap-launch=B    -> overlap-launch           (false: left out)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.passes.base import ModulePass
from compressc.passes.cache_hints import CacheHints
from compressc.passes.l2_prefetch import L2Prefetch
from compressc.passes.occupancy import Occupancy
from compressc.passes.operand_loads import OperandLoads
from compressc.passes.overlap_launch import OverlapLaunch
from compressc.passes.page_lookup import PageLookup
from compressc.passes.rescale import Rescale
from compressc.passes.rows_in_flight import RowsInFlight
from compressc.passes.smem_stage import SmemStage


@dataclass(frozen=True, slots=True)
class WindowPrefetch:
    """The old pass's options, with their old defaults; `expand()` gives the passes.

    Not a pass: it is not in ALL_PASSES and never runs; `parse_pipeline` expands it.
    """

    name: ClassVar[str] = "window-prefetch"
    rows: int = 0
    operands_early: bool = True
    page_lookup: str = "auto"
    occupancy: bool = True
    stage: str = "regs"
    overlap_launch: bool = True
    l2_prefetch: bool = False
    rescale: str = "batch"
    cache_hints: str = "stream"

    def __post_init__(self) -> None:
        choices = {"stage": ("regs", "smem"), "cache_hints": ("stream", "none")}
        for option, allowed in choices.items():
            value = getattr(self, option)
            if value not in allowed:
                raise ValueError(f"window-prefetch {option.replace('_', '-')}={value!r}: "
                                 f"must be {allowed[0]!r} or {allowed[1]!r}")

    def expand(self) -> list[ModulePass]:
        """The passes that make the same decisions, in the order the old pass made them."""
        staged = self.stage == "smem"
        passes: list[ModulePass] = [
            RowsInFlight(self.rows),
            PageLookup(self.page_lookup),
            Rescale("row" if staged else self.rescale),  # the staged rows update one by one
        ]
        passes += [SmemStage()] if staged else []
        passes += [L2Prefetch()] if self.l2_prefetch else []
        passes.append(OperandLoads("early" if self.operands_early else "late"))
        passes += [Occupancy()] if self.occupancy else []
        passes += [CacheHints()] if self.cache_hints == "stream" else []
        passes += [OverlapLaunch()] if self.overlap_launch else []
        return passes
