"""overlap-launch: C128A's store kernel launches under the compress kernel's tail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass


@dataclass(frozen=True, slots=True)
class OverlapLaunch(ModulePass):
    """Let a kernel that loads another's rows launch before that grid ends.

    The store kernel reads the compress kernel's output only in its row body, after its
    metadata scan and operand loads. The compress kernel allows its dependent to launch as
    it starts (griddepcontrol.launch_dependents) and the store kernel, launched with
    programmatic stream serialization, waits for the compress grid (griddepcontrol.wait)
    only right before it loads the pooled rows: its launch, scan and operand round trips
    run under the compress kernel's tail instead of after it. A kernel that neither loads
    nor stores pooled rows is left as it is. Leave the pass out for plain launches.

    Expects: nothing (spec-level ops).
    Leaves:  module `grid_dependency` ("wait" on a kernel with cc.load_rows, "trigger" on
             one with cc.store_rows); nothing else changes.
    Options: none.
    """

    name: ClassVar[str] = "overlap-launch"

    def apply(self, module: Module) -> Module:
        if module.find("cc.load_rows") is not None:
            return module.with_sched(grid_dependency="wait")
        if module.find("cc.store_rows") is not None:
            return module.with_sched(grid_dependency="trigger")
        return module
