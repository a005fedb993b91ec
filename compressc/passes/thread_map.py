"""thread-map: decide which lane owns which channels of the head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.ir.from_spec import spec_from_module
from compressc.passes.base import ModulePass
from compressc.specs.abi import CLUSTER_SIZES, SPLIT_MAX
from compressc.specs.lanes import derive_elems
from compressc.specs.target import DEFAULT_TARGET, WARP

MAX_UNROLLED_WINDOW = 8  # window rows the emitter unrolls straight-line (C4: 8; C128: a loop)
MAX_THREADS = DEFAULT_TARGET.max_threads
SM_THREADS, SM_CTAS = DEFAULT_TARGET.sm_threads, DEFAULT_TARGET.sm_ctas  # resident on one SM


@dataclass(frozen=True, slots=True)
class ThreadMap(ModulePass):
    """Give each lane `elems-per-lane` contiguous channels of the head.

    Expects: a spec-level module (any stage).
    Leaves:  module sched `elems_per_lane`, `head_lanes` (lanes covering one head),
             `window_split` (lane groups pooling disjoint parts of the window),
             `threads`, `warps`, `grid`, `ctas_per_sm`, `cluster_split` (when > 1); on `cc.quant`:
             `lanes_per_group`, `groups_per_warp`. Channel c belongs to lane
             c // elems_per_lane.
    Options: elems-per-lane (0 = the most, at most 8, that lays the head out in whole
             warps: see `derive_elems`);
             window-split (0 = 4 for the 128-row C128 window, else 1);
             grid ("auto": "runs" of `ratio` rows where the whole window is
             unrolled in registers (at most 8 rows) and no ctas-per-sm is given,
             else "tiled"; "tiled": a CTA loops over a run of launched rows and skips the
             inactive ones, the launch holding at most `ctas-per-sm` CTAs per SM;
             "rows": one CTA per launched row, as the peer kernels do);
             "runs": a CTA takes a fixed run of `rows-per-cta` consecutive rows,
             unrolled, and pools only the active ones (grid = ceil(T / run));
             ctas-per-sm (0 = as many as the SM's thread slots hold, at most 32:
             one full wave); rows-per-cta (the run of a "runs" grid, 1..32;
             0 = the compress ratio: one boundary row per run in a prefill);
             cluster-split (1, 2, 4 or 8: the CTAs of one thread-block cluster
             that pool one row's window together, tiled grid only; default 1);
             grid-split (c128a_split only: S CTAs of a plain launch pool one row's
             window and merge through global memory, 1, 2, 4 or 8; 0 = 8, unless
             cluster-split is given). Leaves `cluster_split` = S (the window's parts,
             as for a cluster) and `split_merge` = "global". On c128a_split
             cluster-split=S instead makes the row's S CTAs one cluster: the partials
             meet in rank 0's smem over DSMEM (no workspace, no counter) and rank 0 runs
             the store epilogue; `split_merge` stays unset (docs/kernels.md §13).

    Why tiled: only 1 row in `ratio` writes (1 in 128 for C128 prefill), and a CTA
    spent on an inactive row still costs a launch and a metadata round trip. With
    a capped grid a CTA takes ceil(T / grid) consecutive rows, reads their
    metadata in one round trip (one lane per row, then a ballot) and pools only
    the active ones; at small T the cap is not reached and each CTA has one row.

    Why cluster-split (Hopper clusters): one CTA pools a C128 row's 512 KiB window
    alone, one batch of rows after another, at what one SM ingests (about 10 us a
    row). A prefill of T tokens has T / 128 active rows, fewer than the SMs until
    T = 16K: most SMs idle. With a cluster of S CTAs each pools 1/S of the window on
    its own SM; ranks 1..S-1 leave their (max, sum, weighted sum) in their shared
    memory and rank 0 merges them in rank order over distributed shared memory
    (two cluster barriers a row). The launch gives the runtime's cluster dimension.

    Why runs: ptxas schedules a body inside a dynamic loop differently from the same
    body straight-line: it sinks the window loads between the softmax updates (one
    DRAM round trip after another) and needs +60 registers for C4A (168 -> 230). An
    unrolled run of R rows keeps each row's loads issued up front at the straight-line
    register count, and still skips the inactive rows without a CTA each.
    """

    name: ClassVar[str] = "thread-map"
    elems_per_lane: int = 0
    window_split: int = 0
    grid: str = "auto"
    ctas_per_sm: int = 0
    min_ctas_per_sm: int = 0
    rows_per_cta: int = 0
    cluster_split: int = 1
    grid_split: int = 0

    def apply(self, module: Module) -> Module:
        head = int(module.attr("head"))  # type: ignore[arg-type]
        elems = self.elems_per_lane or self._default_elems(module)
        head_lanes = head // elems if elems > 0 else 0
        split = self.window_split or self._default_split(module, head_lanes)
        threads = head_lanes * split
        if self.grid not in ("auto", "tiled", "rows", "runs"):
            raise ValueError(f"thread-map grid={self.grid!r}: must be 'auto', 'tiled', 'runs' or 'rows'")
        grid = self._grid(module)
        if self.rows_per_cta and grid != "runs":
            raise ValueError(f"rows-per-cta={self.rows_per_cta} is the run of grid=runs; the grid here is "
                             f"{grid!r} (add grid=runs, or drop rows-per-cta)")
        if self.cluster_split not in CLUSTER_SIZES:
            raise ValueError(f"thread-map cluster-split={self.cluster_split}: must be one of "
                             f"{', '.join(map(str, CLUSTER_SIZES))} (CTAs per cluster, 8 at most)")
        if self.cluster_split > 1 and grid != "tiled":
            raise ValueError(f"cluster-split={self.cluster_split} needs the tiled grid; the grid here is "
                             f"{grid!r} (use grid=tiled, or drop cluster-split)")
        if self.cluster_split > 1 and module.find("cc.window") is None:
            raise ValueError(f"cluster-split={self.cluster_split}: this kernel has no window to split")
        if self.ctas_per_sm and grid != "tiled":
            raise ValueError(f"ctas-per-sm={self.ctas_per_sm} sizes the tiled grid's wave; the grid here is "
                             f"{grid!r} (use grid=tiled, or drop ctas-per-sm)")
        per_sm = self.ctas_per_sm or max(1, min(SM_CTAS, SM_THREADS // max(threads, 1)))
        module = module.with_sched(
            elems_per_lane=elems,
            head_lanes=head_lanes,
            window_split=split,
            threads=threads,
            warps=threads // WARP,
            grid=grid,
            ctas_per_sm=per_sm if grid == "tiled" else 0,
        )
        module = self._grid_split(module, grid)
        if grid == "runs":
            module = module.with_sched(rows_per_cta=self.rows_per_cta or self._default_run(module))
        if self.min_ctas_per_sm:
            module = module.with_sched(min_ctas_per_sm=self.min_ctas_per_sm)
        return module.replace_ops("cc.quant", lambda op: self._quant(op, elems))

    def _grid_split(self, module: Module, grid: str) -> Module:
        """A cluster's CTAs, or c128a_split's S CTAs per row (docs/kernels.md §13): it needs the
        tiled grid, whose rows the S CTAs share (another grid, as the baseline's, pools alone);
        they merge through global memory (grid-split) or, as a cluster, over DSMEM (cluster-split)."""
        if module.attr("kernel") != "c128a_split":
            if self.grid_split:
                raise ValueError(f"grid-split={self.grid_split} is c128a_split's (its CTAs merge through "
                                 "global memory); use cluster-split for a cluster of CTAs")
            return module.with_sched(cluster_split=self.cluster_split) if self.cluster_split > 1 else module
        if self.grid_split and grid != "tiled":
            raise ValueError(f"grid-split={self.grid_split} needs the tiled grid; the grid here is {grid!r}")
        if self.cluster_split > 1 and self.grid_split:
            raise ValueError(f"grid-split={self.grid_split} and cluster-split={self.cluster_split} both "
                             "split c128a_split's window: keep one (grid-split: a plain launch merging "
                             "through global memory; cluster-split: a cluster merging over DSMEM)")
        if self.cluster_split > 1:  # the cluster merge: rank 0 runs the store epilogue (§13)
            return module.with_sched(cluster_split=self.cluster_split)
        split = self.grid_split or (SPLIT_MAX if grid == "tiled" else 1)
        if split not in CLUSTER_SIZES:
            raise ValueError(f"thread-map grid-split={split}: must be one of "
                             f"{', '.join(map(str, CLUSTER_SIZES))} (CTAs per window, {SPLIT_MAX} at most)")
        if split == 1:
            return module
        return module.with_sched(cluster_split=split, split_merge="global")

    def _grid(self, module: Module) -> str:
        if self.grid != "auto":
            return self.grid
        if module.attr("kernel") == "c128a_split":  # its CTAs of a row share the tiled grid's rows
            return "tiled"
        if module.find("cc.segment") is not None:  # the online merge: one CTA per segment (§9.1)
            return "rows"
        if self.cluster_split > 1:
            return "tiled"
        window = module.find("cc.window")
        unrolled = window is not None and int(window.attr("window")) <= MAX_UNROLLED_WINDOW  # type: ignore[arg-type]
        return "runs" if unrolled and not self.ctas_per_sm else "tiled"

    @staticmethod
    def _default_run(module: Module) -> int:
        # one compression boundary per run in a prefill (positions r-1, 2r-1, ...), at most
        # the 32 rows one warp ballot decides
        return min(32, int(module.attr("ratio", 4) or 4))  # type: ignore[arg-type]

    @staticmethod
    def _default_elems(module: Module) -> int:
        # c128a_split: 8 channels a lane need 255 registers and spill with the store epilogue
        # after the window; 4 build at 160 (sm_90a, ptxas 13.4)
        elems = derive_elems(spec_from_module(module))
        return min(elems, 4) if module.attr("kernel") == "c128a_split" else elems

    @staticmethod
    def _default_split(module: Module, head_lanes: int) -> int:
        if module.attr("kernel") == "c128a_split":  # its window is already cut over S CTAs
            return 2
        window = module.find("cc.window")
        if window is None or int(window.attr("window")) < 64:  # type: ignore[arg-type]
            return 1
        # 128 rows on one head's 64 lanes is a long serial chain: split it over 4 groups,
        # fewer where 4 copies of a wider head's lanes would pass 1024 threads a CTA
        split = 4
        while split > 1 and head_lanes * split > MAX_THREADS:
            split //= 2
        return split

    @staticmethod
    def _quant(op: Op, elems: int) -> Op:
        lanes = max(1, int(op.attr("block")) // elems)  # type: ignore[arg-type]
        return op.with_sched(lanes_per_group=lanes, groups_per_warp=max(1, WARP // lanes))

