"""page-lookup: which lanes read the page table for the window's rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.ir.ring import is_ring
from compressc.passes.base import ModulePass, pool_rows_per_group, refuse_on_ring, require_thread_map
from compressc.specs.target import WARP

LOOKUPS = ("auto", "lane", "row")


def lane_lookup_fits(module: Module) -> bool:
    """Whether one lane per window row of a split group can look the pages up: the
    group has at most 32 rows and every warp lies inside one group."""
    head_lanes = int(module.get("head_lanes", 0))  # type: ignore[arg-type]
    return 0 < pool_rows_per_group(module) <= WARP and head_lanes % WARP == 0


@dataclass(frozen=True, slots=True)
class PageLookup(ModulePass):
    """Decide who reads the block table for the window's rows.

    With `by=lane` lane i of every warp reads the page of its group's window row i once,
    before the first batch, and each batch takes a row's page from that lane with one
    shuffle. A batched window then pays one page-table round trip per row instead of one
    per batch (C128: 1 instead of 4 per group), and a lane issues one page-table load
    instead of one per row. `by=row` looks each row's page up in the batch that loads it.

    Ring state (a `cc.ring_state` window, docs/kernels.md §10) has no pages: its lookup is
    "row", and `by=lane` is refused.

    Expects: thread-map has run (`window_split`, `head_lanes`).
    Leaves:  cc.window `page_lookup` ("lane" or "row"); nothing else changes.
    Options: by ("auto", default: "lane" where a split group has at most 32 rows and its
             lanes fill whole warps, and the window is paged, else "row"; "lane"; "row").
    """

    name: ClassVar[str] = "page-lookup"
    by: str = "auto"

    def __post_init__(self) -> None:
        if self.by not in LOOKUPS:
            raise ValueError(f"page-lookup by={self.by!r}: must be 'auto', 'lane' or 'row'")

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        lookup = self._resolve(module)
        return module.replace_ops("cc.window", lambda op: op.with_sched(page_lookup=lookup))

    def _resolve(self, module: Module) -> str:
        if self.by == "auto":
            return "lane" if lane_lookup_fits(module) and not is_ring(module) else "row"
        if self.by == "lane":
            refuse_on_ring(module, "page-lookup{by=lane}", "use by=row, or auto")
            if module.find("cc.window") is not None and not lane_lookup_fits(module):
                raise ValueError(
                    f"page-lookup by=lane needs at most {WARP} window rows per split group (have "
                    f"{pool_rows_per_group(module)}) and whole warps per group (head_lanes "
                    f"{module.get('head_lanes')}): raise thread-map's window-split, or use by=row")
        return self.by
