"""window-prefetch: how many window rows a lane loads before its first update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass, pool_rows_per_group

DEFAULT_MAX_IN_FLIGHT = 8


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

    Expects: thread-map has run (`window_split`).
    Leaves:  cc.window `rows_in_flight` (divides the rows of a split group);
             cc.rms_norm and cc.rope `load` ("early" or "late").
    Options: rows (0 = min(rows per group, 8)); operands-early (default true).
    """

    name: ClassVar[str] = "window-prefetch"
    rows: int = 0
    operands_early: bool = True

    def apply(self, module: Module) -> Module:
        per_group = pool_rows_per_group(module)
        rows = self.rows or min(per_group, DEFAULT_MAX_IN_FLIGHT)
        load = "early" if self.operands_early else "late"
        module = module.replace_ops("cc.window", lambda op: op.with_sched(rows_in_flight=rows))
        for name in ("cc.rms_norm", "cc.rope"):
            module = module.replace_ops(name, lambda op: op.with_sched(load=load))
        return module
