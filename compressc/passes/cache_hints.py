"""cache-hints: read-once window loads and L2-kept stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass


@dataclass(frozen=True, slots=True)
class CacheHints(ModulePass):
    """Give the window's loads and the kernel's stores their cache policies.

    Every window row is read exactly once, so its loads bypass L1 allocation and are L2
    evict_first, and the kernel's output (the packed cache rows, C128A's pooled rows) is
    stored L2 evict_last. Plain loads let 0.5 GB of streaming state evict the written
    lines, which then go back to DRAM piecemeal, in the middle of the read stream; C4A
    decode at T = 16K spent 14 us of its 143 on its 9.6 MB of stores that way
    (benchmarks/NOTES.md, change 15). The smem-staged window keeps its cp.async.cg copies
    (L2 only, no policy). Leave the pass out for plain accesses (the baseline).

    Expects: nothing.
    Leaves:  module `cache_hints` ("stream"); nothing else changes.
    Options: none.
    """

    name: ClassVar[str] = "cache-hints"

    def apply(self, module: Module) -> Module:
        return module.with_sched(cache_hints="stream")
