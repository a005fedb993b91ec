"""occupancy: the CTAs per SM a "runs" grid asks ptxas for (.minnctapersm)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass, pool_rows_per_group, require_thread_map, window_after
from compressc.specs.target import WARP

QUADRANTS, QUADRANT_REGISTERS = 4, 16384  # Hopper: an SM's register file, per warp scheduler
# registers beside the window's data, by how the softmax rescales: C4A straight-line takes
# 168 - 128 row by row; one rescale per batch keeps the batch's max chain live too (C4A
# with an fp32 RMS weight: 187 - 128)
REGISTER_OVERHEAD = {"row": 40, "batch": 60}
# c128a_split: 2 CTAs of 256 threads per SM hold a decode step of 32 rows x 8 CTAs in one wave
# on 132 SMs (one row per CTA group). Left alone ptxas takes 132 registers for the e4 x 2 default
# (1 CTA per SM: 16 groups of 2 rows each); asked for 2 it fits 126 without spilling.
SPLIT_ROW_CTAS = 2


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


@dataclass(frozen=True, slots=True)
class Occupancy(ModulePass):
    """Ask ptxas for the CTAs per SM that an unrolled window's registers allow.

    A "runs" grid pays for its registers in resident CTAs, and a window unrolled whole
    (rows in flight = the group's rows, in registers) is the bulk of them. The module asks
    ptxas (.minnctapersm) for the CTAs per SM that the window's registers plus a fixed
    overhead allow (C4A: 6, at 168 registers, where ptxas alone takes 176 and the SM holds
    4). c128a_split's row split (a global merge or a cluster's) asks for SPLIT_ROW_CTAS CTAs
    per SM wherever that many CTAs' threads fit an SM (2048 threads: CTAs of up to 1024).
    Any other schedule, or one whose thread-map set min-ctas-per-sm, is left as it is.
    Leave the pass out for no hint.

    Expects: rows-in-flight has run (and rescale, whose choice sets the overhead: unset is
             row by row); it reads the window's staging, so runs after smem-stage.
    Leaves:  module `min_ctas_per_sm` (a "runs" grid with the whole window unrolled in
             registers, or c128a_split's row split); nothing else changes.
    Options: none.
    """

    name: ClassVar[str] = "occupancy"

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        window = window_after(module, self.name, "rows_in_flight", "rows-in-flight")
        if window is None or module.get("min_ctas_per_sm"):
            return module
        if module.attr("kernel") == "c128a_split" and module.get("cluster_split", 1) != 1:
            return self._split(module)  # its row split, merged in global memory or in a cluster
        if module.get("grid") != "runs":
            return module
        rows, per_group = window.get("rows_in_flight"), pool_rows_per_group(module)
        if rows != per_group or window.get("stage") == "smem":
            return module  # a batch loop or the smem stage: the window is not all in registers
        rescale = str(window.get("rescale") or "row")
        return module.with_sched(min_ctas_per_sm=straight_line_occupancy(module, per_group, rescale))

    @staticmethod
    def _split(module: Module) -> Module:
        threads = int(module.get("threads"))  # type: ignore[arg-type]
        if threads * SPLIT_ROW_CTAS > 2048:
            return module
        return module.with_sched(min_ctas_per_sm=SPLIT_ROW_CTAS)
