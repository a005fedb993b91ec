"""thread-map: decide which lane owns which channels of the head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.passes.base import ModulePass

WARP = 32
MAX_ELEMS_PER_LANE = 8  # 8 fp32 = two 128-bit loads per stream and row
SM_THREADS, SM_CTAS = 2048, 32  # Hopper: resident threads and CTAs per multiprocessor


@dataclass(frozen=True, slots=True)
class ThreadMap(ModulePass):
    """Give each lane `elems-per-lane` contiguous channels of the head.

    Expects: a spec-level module (any stage).
    Leaves:  module sched `elems_per_lane`, `head_lanes` (lanes covering one head),
             `window_split` (lane groups pooling disjoint parts of the window),
             `threads`, `warps`, `grid`, `ctas_per_sm`; on `cc.quant`:
             `lanes_per_group`, `groups_per_warp`. Channel c belongs to lane
             c // elems_per_lane.
    Options: elems-per-lane (0 = the most that still fills a warp, at most 8);
             window-split (0 = 4 for the 128-row C128 window, else 1);
             grid ("tiled": a CTA loops over a run of launched rows and skips the
             inactive ones, the launch holding at most `ctas-per-sm` CTAs per SM;
             "rows": one CTA per launched row, as the peer kernels do);
             ctas-per-sm (0 = as many as the SM's thread slots hold, at most 32:
             one full wave).

    Why tiled: only 1 row in `ratio` writes (1 in 128 for C128 prefill), and a CTA
    spent on an inactive row still costs a launch and a metadata round trip. With
    a capped grid a CTA takes ceil(T / grid) consecutive rows, reads their
    metadata in one round trip (one lane per row, then a ballot) and pools only
    the active ones; at small T the cap is not reached and each CTA has one row.
    """

    name: ClassVar[str] = "thread-map"
    elems_per_lane: int = 0
    window_split: int = 0
    grid: str = "tiled"
    ctas_per_sm: int = 0
    min_ctas_per_sm: int = 0

    def apply(self, module: Module) -> Module:
        head = int(module.attr("head"))  # type: ignore[arg-type]
        elems = self.elems_per_lane or self._default_elems(head)
        split = self.window_split or self._default_split(module)
        head_lanes = head // elems if elems > 0 else 0
        threads = head_lanes * split
        if self.grid not in ("tiled", "rows"):
            raise ValueError(f"thread-map grid={self.grid!r}: must be 'tiled' or 'rows'")
        per_sm = self.ctas_per_sm or max(1, min(SM_CTAS, SM_THREADS // max(threads, 1)))
        module = module.with_sched(
            elems_per_lane=elems,
            head_lanes=head_lanes,
            window_split=split,
            threads=threads,
            warps=threads // WARP,
            grid=self.grid,
            ctas_per_sm=per_sm if self.grid == "tiled" else 0,
        )
        if self.min_ctas_per_sm:
            module = module.with_sched(min_ctas_per_sm=self.min_ctas_per_sm)
        return module.replace_ops("cc.quant", lambda op: self._quant(op, elems))

    @staticmethod
    def _default_elems(head: int) -> int:
        return max(1, min(MAX_ELEMS_PER_LANE, head // WARP))

    @staticmethod
    def _default_split(module: Module) -> int:
        window = module.find("cc.window")
        # 128 rows on one head's 64 lanes is a long serial chain: split it over 4 groups.
        if window is not None and int(window.attr("window")) >= 64:  # type: ignore[arg-type]
            return 4
        return 1

    @staticmethod
    def _quant(op: Op, elems: int) -> Op:
        lanes = max(1, int(op.attr("block")) // elems)  # type: ignore[arg-type]
        return op.with_sched(lanes_per_group=lanes, groups_per_warp=max(1, WARP // lanes))
