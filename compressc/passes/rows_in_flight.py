"""rows-in-flight: how many window rows a lane loads before their first softmax update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.ir.online import MAX_ROWS_IN_FLIGHT
from compressc.passes.base import ModulePass, pool_rows_per_group, require_thread_map

DEFAULT_MAX_IN_FLIGHT = 8
ONLINE_IN_FLIGHT = 4  # the online merge's token rows a batch: 3 x 8 fp32 registers each at 8 a lane


@dataclass(frozen=True, slots=True)
class RowsInFlight(ModulePass):
    """Issue the page-table and row loads of `rows` window rows before any math.

    The peer kernel loads one row, updates the online softmax, then loads the next: every
    row pays a full memory latency. Loading a batch first keeps that many 128-bit loads in
    flight per lane (registers: 2 * elems_per_lane per row); more batches run as a loop.

    Expects: thread-map has run (`window_split`, `cluster_split`, `head_lanes`).
    Leaves:  cc.window `rows_in_flight` (divides the rows of a split group);
             cc.online_merge `rows_in_flight` (its segment's token rows loaded before their
             updates, the tail predicated; 1..16). Every pipeline that runs it and
             plan-smem ends with lower-grid.
    Options: rows (0 = min(rows per split group, 8) on a window, 4 on the online merge).
    """

    name: ClassVar[str] = "rows-in-flight"
    rows: int = 0

    def __post_init__(self) -> None:
        if self.rows < 0:
            raise ValueError(f"rows-in-flight rows={self.rows}: must be 0 (derive) or a row count >= 1")

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        per_group = pool_rows_per_group(module)
        rows = self.rows or min(per_group, DEFAULT_MAX_IN_FLIGHT)
        if module.find("cc.window") is not None and (rows < 1 or per_group % rows):
            raise ValueError(f"rows-in-flight rows={rows}: must divide the {per_group} window rows each "
                             "split group pools (window / (window-split x cluster-split))")
        merge_rows = self.rows or ONLINE_IN_FLIGHT
        if module.find("cc.online_merge") is not None and merge_rows > MAX_ROWS_IN_FLIGHT:
            raise ValueError(f"rows-in-flight rows={merge_rows}: the online merge holds at most "
                             f"{MAX_ROWS_IN_FLIGHT} token rows in registers (3 x elems-per-lane fp32 each)")
        module = module.replace_ops("cc.window", lambda op: op.with_sched(rows_in_flight=rows))
        return module.replace_ops("cc.online_merge", lambda op: op.with_sched(rows_in_flight=merge_rows))
