"""l2-prefetch: start every window page's DRAM trip at once, into L2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass, refuse_on_ring, require_thread_map, window_after


@dataclass(frozen=True, slots=True)
class L2Prefetch(ModulePass):
    """Prefetch the window's pages into L2 once their lane lookups are known.

    With lane page lookups of a one-stream window (C128), the first lanes of each group
    start one bulk L2 prefetch (cp.async.bulk.prefetch.L2) per page run of the group's
    rows, so every page's DRAM trip starts at once instead of at its batch; the batches
    then load from L2. Leave the pass out for no prefetch.

    Expects: page-lookup has run with the result "lane" (at most 32 rows per split group);
             a one-stream window without absent rows (window == ratio: C128, not the
             overlapping C4); a paged window (a ring window is refused).
    Leaves:  cc.window `l2_prefetch` (true); nothing else changes.
    Options: none.
    """

    name: ClassVar[str] = "l2-prefetch"

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        refuse_on_ring(module, self.name, "leave l2-prefetch out")
        window = window_after(module, self.name, "page_lookup", "page-lookup")
        if window is None:
            raise ValueError("l2-prefetch: the kernel has no window to prefetch")
        why = []
        if window.get("page_lookup") != "lane":
            why.append("lane page lookups (page-lookup{by=lane}: at most 32 rows per split group)")
        if int(window.attr("window")) != int(window.attr("ratio")):  # type: ignore[arg-type]
            why.append("a one-stream window without absent rows (C128, not the overlapping C4)")
        if why:
            raise ValueError("l2-prefetch needs " + "; ".join(why))
        return module.replace_ops("cc.window", lambda op: op.with_sched(l2_prefetch=True))
