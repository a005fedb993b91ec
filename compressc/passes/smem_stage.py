"""smem-stage: copy the window through shared memory, one row ahead of the math."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.passes.base import (
    ModulePass,
    pool_rows_per_group,
    refuse_on_ring,
    require_thread_map,
    window_after,
)

FP32, SLOTS, STREAMS = 4, 2, 2


def staged_bytes(module: Module, rows: int) -> int:
    """Dynamic shared memory of the stage: two slots of `rows` rows x 2 streams x
    elems_per_lane fp32 per thread (C4A: 64 KiB)."""
    elems, threads = int(module.get("elems_per_lane")), int(module.get("threads"))  # type: ignore[arg-type]
    return SLOTS * rows * STREAMS * elems * FP32 * threads


@dataclass(frozen=True, slots=True)
class SmemStage(ModulePass):
    """Stage the window in shared memory with cp.async, double-buffered across a CTA's rows.

    The window is copied global -> shared with cp.async (16 bytes a copy, no register held
    while in flight) into one of two slots, and a CTA issues the next active row's copies
    before it pools the current one: the next row's page-table and window round trips run
    under this row's math instead of after it. Each lane reads back only what it copied
    itself, so the slots need no barrier. The copies are cp.async.cg (L2 only, no cache
    policy). Leave the pass out to keep the window in registers.

    Expects: thread-map{grid=tiled} with one group (window-split=1, no cluster-split),
             rows-in-flight with the whole window in one batch, page-lookup by=lane,
             elems-per-lane a multiple of 4, and no rescale per=batch before it; a paged
             window (a ring window is refused).
    Leaves:  cc.window `stage` ("smem"); module `smem_dynamic` (staged_bytes). Nothing else.
    Options: none.
    """

    name: ClassVar[str] = "smem-stage"

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        refuse_on_ring(module, self.name, "leave smem-stage out")
        window = window_after(module, self.name, "rows_in_flight", "rows-in-flight")
        if window is None:
            raise ValueError("smem-stage: the kernel has no window to stage")
        window_after(module, self.name, "page_lookup", "page-lookup")
        why = self._unmet(module, window)
        if why:
            raise ValueError("smem-stage needs " + "; ".join(why))
        rows = int(window.get("rows_in_flight"))  # type: ignore[arg-type]
        staged = module.replace_ops("cc.window", lambda op: op.with_sched(stage="smem"))
        return staged.with_sched(smem_dynamic=staged_bytes(module, rows))

    @staticmethod
    def _unmet(module: Module, window: Op) -> list[str]:
        """The stage's requirements this module misses, each with the option that meets it."""
        elems = int(module.get("elems_per_lane"))  # type: ignore[arg-type]
        why = []
        if module.get("grid") != "tiled":
            why.append(f"a tiled grid (have grid={module.get('grid')!r}: thread-map{{grid=tiled}})")
        parts = int(module.get("window_split")) * int(module.get("cluster_split", 1))  # type: ignore[arg-type]
        if window.get("rows_in_flight") != pool_rows_per_group(module) or parts != 1:
            why.append("the whole window in one batch of one group (window-split=1, no cluster-split, "
                       "rows-in-flight rows=0)")
        if elems % 4:
            why.append(f"elems-per-lane a multiple of 4 for 16-byte copies (have {elems})")
        if window.get("page_lookup") != "lane":
            why.append("lane page lookups (page-lookup{by=lane})")
        if window.get("rescale") == "batch":
            why.append("no batch rescale (rescale{per=row}: the staged rows are read back one by one)")
        return why
