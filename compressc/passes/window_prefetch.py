"""window-prefetch: how many window rows a lane loads before its first update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.ir.ring import is_ring
from compressc.passes.base import ModulePass, pool_rows_per_group, require_thread_map
from compressc.specs.target import WARP

DEFAULT_MAX_IN_FLIGHT = 8
ONLINE_IN_FLIGHT = 4  # the online merge's token rows a batch: 3 x 8 fp32 registers each at 8 a lane
QUADRANTS, QUADRANT_REGISTERS = 4, 16384  # Hopper: an SM's register file, per warp scheduler
# registers beside the window's data, by how the softmax rescales: C4A straight-line takes
# 168 - 128 row by row; one rescale per batch keeps the batch's max chain live too (C4A
# with an fp32 RMS weight: 187 - 128)
REGISTER_OVERHEAD = {"row": 40, "batch": 60}


def straight_line_occupancy(module: Module, rows: int, rescale: str = "row") -> int:
    """CTAs per SM when ptxas needs only the window's registers plus a fixed overhead.

    A lane holds `rows` x 2 streams x `elems_per_lane` fp32 of the window (C4A: 128)
    and ptxas needs about REGISTER_OVERHEAD more (C4A straight-line, row by row: 168, 6
    CTAs of 64 threads; one rescale per batch: up to 187, 5 CTAs).
    Left alone it may take a few more and drop to one CTA fewer per SM. The register
    file is four quadrants of 16K, one per warp scheduler, so a warp's share is
    16K / ceil(resident warps / 4), in steps of 8 registers per lane.
    """
    need = rows * 2 * int(module.get("elems_per_lane")) + REGISTER_OVERHEAD[rescale]  # type: ignore[arg-type]
    threads = int(module.get("threads"))  # type: ignore[arg-type]
    warps = -(-threads // WARP)
    best = 1
    for ctas in range(1, min(32, 2048 // threads) + 1):
        per_quadrant = -(-ctas * warps // QUADRANTS)
        if (QUADRANT_REGISTERS // (per_quadrant * WARP)) // 8 * 8 >= need:
            best = ctas
    return best


def lane_lookup_fits(module: Module) -> bool:
    """Whether one lane per window row of a split group can look the pages up: the
    group has at most 32 rows and every warp lies inside one group."""
    head_lanes = int(module.get("head_lanes", 0))  # type: ignore[arg-type]
    return 0 < pool_rows_per_group(module) <= WARP and head_lanes % WARP == 0


@dataclass(frozen=True, slots=True)
class WindowPrefetch(ModulePass):
    """Issue the page-table and row loads of `rows` window rows before any math.

    The peer kernel loads one row, updates the online softmax, then loads the next:
    every row pays a full memory latency. Loading a batch first keeps that many
    128-bit loads in flight per lane (registers: 2 * elems_per_lane per row).

    The same holds for the operands of the epilogue: the RMS weight depends on
    nothing and the rope's cos/sin only on the position, so with `operands-early`
    their loads are issued right after the row's metadata, in the shadow of the
    window gather, instead of one more round trip after the RMS barrier.

    Page lookups: with `page-lookup=lane` lane i of every warp reads the page of its
    group's window row i once, before the first batch, and each batch takes a row's
    page from that lane with one shuffle. A batched window then pays one page-table
    round trip per row instead of one per batch (C128: 1 instead of 4 per group),
    and a lane issues one page-table load instead of one per row.

    Occupancy: a "runs" grid pays for its registers in resident CTAs, and a window
    unrolled whole (rows in flight = the group's rows) is the bulk of them. With
    `occupancy` (and no min_ctas_per_sm from thread-map) the module asks ptxas
    (.minnctapersm) for the CTAs per SM that the window's registers plus a fixed
    overhead allow (C4A: 6, at 168 registers, where ptxas alone takes 176 and the SM
    holds 4).

    Staging (`stage=smem`, tiled grid): the window is copied global -> shared with
    cp.async (16 bytes a copy, no register held while in flight) into one of two
    slots, and a CTA issues the next active row's copies before it pools the current
    one: the next row's page-table and window round trips run under this row's math
    instead of after it. Each lane reads back only what it copied itself, so the
    slots need no barrier. Dynamic shared memory: 2 x window x 2 streams x
    elems_per_lane x 4 bytes per thread (C4A: 64 KiB).

    Rescale (`rescale=batch`): a batch's rows are in registers together, so the online
    softmax takes the batch's max first and rescales (sum, weighted sum) once per batch:
    1 + rows ex2 per channel instead of 2 per row. The ex2 unit is what one SM runs out of
    first on a C128 row alone (128 x 512 x 2 ex2 at 16 a clock: 4.4 us). `rescale=row`
    updates row by row (the peer's order).

    L2 prefetch (`l2-prefetch`, lane page lookups of a one-stream window: C128): once the
    pages are known, the first lanes of each group start one bulk L2 prefetch
    (cp.async.bulk.prefetch.L2) per page run of the group's rows, so every page's DRAM
    trip starts at once instead of at its batch; the batches then load from L2.

    Launch overlap (C128A's two kernels): the store kernel reads the compress kernel's
    output only in its row body, after its metadata scan and operand loads. With
    `overlap-launch` the compress kernel allows its dependent to launch as it starts
    (griddepcontrol.launch_dependents) and the store kernel, launched with programmatic
    stream serialization, waits for the compress grid (griddepcontrol.wait) only right
    before it loads the pooled rows: its launch, scan and operand round trips run under
    the compress kernel's tail instead of after it.

    Cache hints (`cache-hints=stream`, the default; `none` in the baseline): every window
    row is read exactly once, so its loads bypass L1 allocation and are L2 evict_first, and
    the kernel's output (the packed cache rows, C128A's pooled rows) is stored L2
    evict_last. Plain loads let 0.5 GB of streaming state evict the written lines, which
    then go back to DRAM piecemeal, in the middle of the read stream; C4A decode at T = 16K
    spent 14 us of its 143 on its 9.6 MB of stores that way (benchmarks/NOTES.md, change 15).
    The smem-staged window keeps its cp.async.cg copies (L2 only, no policy).

    Ring state (a `cc.ring_state` window, docs/kernels.md §10): the page lookups, the L2 page
    prefetch and the smem stage are paged-state paths and are refused; page_lookup is "row".

    Expects: thread-map has run (`window_split`, `head_lanes`).
    Leaves:  cc.online_merge `rows_in_flight` (`rows`, default ONLINE_IN_FLIGHT: its segment's
             token rows loaded before their updates, the tail predicated);
             cc.window `rows_in_flight` (divides the rows of a split group) and
             `page_lookup` ("lane" or "row") and `rescale` ("batch" or "row"); cc.rms_norm and cc.rope `load`
             ("early" or "late"); module `min_ctas_per_sm` (runs grid, see Occupancy);
             module `grid_dependency` ("trigger" on a kernel that writes pooled rows,
             "wait" on one that loads them; unset without overlap-launch); module
             `cache_hints` ("stream"; unset with cache-hints=none).
    Options: rows (0 = min(rows per group, 8)); operands-early (default true);
             page-lookup ("auto" = "lane" where a group has at most 32 rows and
             its lanes fill whole warps, else "row"; "lane"; "row"); occupancy
             (default true: set min_ctas_per_sm for a "runs" grid); stage ("regs":
             window rows loaded into registers; "smem": staged, see above);
             overlap-launch (default true: see Launch overlap); l2-prefetch (default
             false: see L2 prefetch); rescale ("batch", default, or "row": see Rescale);
             cache-hints ("stream", default, or "none": see Cache hints).
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

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        if self.cache_hints not in ("stream", "none"):
            raise ValueError(f"window-prefetch cache-hints={self.cache_hints!r}: must be 'stream' or 'none'")
        if self.stage not in ("regs", "smem"):
            raise ValueError(f"window-prefetch stage={self.stage!r}: must be 'regs' or 'smem'")
        if self.rescale not in ("batch", "row"):
            raise ValueError(f"window-prefetch rescale={self.rescale!r}: must be 'batch' or 'row'")
        if self.page_lookup not in ("auto", "lane", "row"):
            raise ValueError(
                f"window-prefetch page-lookup={self.page_lookup!r}: must be 'auto', 'lane' or 'row'"
            )
        per_group = pool_rows_per_group(module)
        rows = self.rows or min(per_group, DEFAULT_MAX_IN_FLIGHT)
        load = "early" if self.operands_early else "late"
        lookup = self._lookup(module)
        module = module.replace_ops(
            "cc.window",
            lambda op: op.with_sched(rows_in_flight=rows, page_lookup=lookup, rescale=self.rescale),
        )
        module = module.replace_ops(
            "cc.online_merge", lambda op: op.with_sched(rows_in_flight=self.rows or ONLINE_IN_FLIGHT))
        if self.stage == "smem":
            module = self._stage_in_smem(module, rows)
        if self.l2_prefetch:
            module = self._prefetch_to_l2(module)
        for name in ("cc.rms_norm", "cc.rope"):
            module = module.replace_ops(name, lambda op: op.with_sched(load=load))
        # the whole window unrolled in registers, no batch loop
        straight = per_group and rows == per_group and self.stage == "regs"
        if self.occupancy and module.get("grid") == "runs" and not module.get("min_ctas_per_sm") and straight:
            module = module.with_sched(min_ctas_per_sm=straight_line_occupancy(module, rows, self.rescale))
        if self.cache_hints == "stream":
            module = module.with_sched(cache_hints="stream")
        if self.overlap_launch and module.find("cc.load_rows") is not None:
            module = module.with_sched(grid_dependency="wait")
        elif self.overlap_launch and module.find("cc.store_rows") is not None:
            module = module.with_sched(grid_dependency="trigger")
        return module

    def _lookup(self, module: Module) -> str:
        """page-lookup with "auto" resolved; a ring window's paged options refused."""
        lookup = self.page_lookup
        if lookup == "auto":
            lookup = "lane" if lane_lookup_fits(module) and not is_ring(module) else "row"
        if is_ring(module):
            self._refuse_for_ring(lookup)
        return lookup

    def _refuse_for_ring(self, lookup: str) -> None:
        """A ring window (docs/kernels.md §10) has one state block per request and no pages."""
        bad = [f"page-lookup={lookup}"] if lookup != "row" else []
        bad += ["l2-prefetch=true"] if self.l2_prefetch else []
        bad += ["stage=smem"] if self.stage == "smem" else []
        if bad:
            raise ValueError(f"window-prefetch {', '.join(bad)}: a ring window reads one state block per "
                             "request, not pages (leave page-lookup, l2-prefetch and stage at their "
                             "defaults)")

    @staticmethod
    def _prefetch_to_l2(module: Module) -> Module:
        window = module.find("cc.window")
        if window is None:
            raise ValueError("window-prefetch l2-prefetch: the kernel has no window to prefetch")
        why = []
        if window.get("page_lookup") != "lane":
            why.append("lane page lookups (page-lookup=lane: at most 32 rows per split group)")
        if int(window.attr("window")) != int(window.attr("ratio")):  # type: ignore[arg-type]
            why.append("a one-stream window without absent rows (C128, not the overlapping C4)")
        if why:
            raise ValueError("window-prefetch l2-prefetch needs " + "; ".join(why))
        return module.replace_ops("cc.window", lambda op: op.with_sched(l2_prefetch=True))

    @staticmethod
    def _stage_in_smem(module: Module, rows: int) -> Module:
        elems, threads = int(module.get("elems_per_lane")), int(module.get("threads"))  # type: ignore[arg-type]
        window = module.find("cc.window")
        if window is None:
            raise ValueError("window-prefetch stage=smem: the kernel has no window to stage")
        why = []
        if module.get("grid") != "tiled":
            why.append(f"a tiled grid (have grid={module.get('grid')!r}: thread-map{{grid=tiled}})")
        parts = int(module.get("window_split")) * int(module.get("cluster_split", 1))  # type: ignore[arg-type]
        one_group = parts == 1
        if rows != pool_rows_per_group(module) or not one_group:
            why.append("the whole window in one batch of one group "
                       "(window-split=1, no cluster-split, rows=0)")
        if elems % 4:
            why.append(f"elems-per-lane a multiple of 4 for 16-byte copies (have {elems})")
        if window.get("page_lookup") != "lane":
            why.append("page-lookup=lane")
        if why:
            raise ValueError("window-prefetch stage=smem needs " + "; ".join(why))
        # the staged rows are read back one by one from smem: updated row by row
        staged = module.replace_ops("cc.window", lambda op: op.with_sched(stage="smem", rescale="row"))
        return staged.with_sched(
            smem_dynamic=2 * rows * 2 * elems * 4 * threads
        )
