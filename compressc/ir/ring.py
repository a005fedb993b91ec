"""The C128 ring state in the IR (docs/kernels.md §10): one op and the rules that own it.

A ring compress kernel's window reads each row from one of two places: this launch's own
`kv`/`score` rows (plus `ape`) when the row lies in the request's chunk, else the request's
ring block. `cc.ring_state` says so in the IR: it takes the ring, the block table, the raw
inputs and the query starts, and the window pools from it instead of from the paged state:

    %ring = cc.ring_state(%state_cache, %block_table, %kv, %score, %ape, %query_start_loc, %active)
            {ratio = 128, window = 128, head = 512, state_width = 512, ape_rows = 128}
    %win = cc.window(%ring, %active) {...}

The ring's capacity is the run-time parameter `ring_capacity` (a multiple of the window: the
runtime checks it), so one kernel serves every number of speculative tokens. Because a C128
window starts at a multiple of 128 and the capacity is one too, its 128 rows never wrap
inside the ring: one modulo per active row finds them all.
"""

from __future__ import annotations

from collections.abc import Callable

from compressc.ir.core import Module, Op, fields

RING_OP = "cc.ring_state"
RING_ATTRS = ("ratio", "window", "head", "state_width", "ape_rows")
RING_OPERANDS = ("state_cache", "block_table", "kv", "score", "ape", "query_start_loc", "active")


def ring_ops(ratio: int, window: int, head: int, state_width: int) -> list[Op]:
    """The spec-level `cc.ring_state` op and the `cc.window` that pools from it."""
    ring = Op(RING_OP, "ring", RING_OPERANDS,
              fields(ratio=ratio, window=window, head=head, state_width=state_width, ape_rows=ratio))
    win = Op("cc.window", "win", ("ring", "active"),
             fields(ratio=ratio, window=window, overlap=False, head=head, state_width=state_width))
    return [ring, win]


def window_source(module: Module, window: Op) -> Op | None:
    """The op that defines the window's first operand (None: a kernel argument, the paged state)."""
    first = window.operands[0] if window.operands else ""
    return next((op for op in module.ops if op.result == first and op.name != "cc.arg"), None)


def is_ring(module: Module) -> bool:
    return module.find(RING_OP) is not None


Fail = Callable[[Module, "Op | None", str, object, str], Exception]


def verify_ring(module: Module, fail: Fail) -> None:
    """A ring module's window pools from its cc.ring_state, whose window never wraps: the
    window is one stream of `ratio` rows and ape has a row per window row. The schedule
    may not take the paged window's page-table paths (lane lookups, L2 page prefetch,
    the smem stage: they read state pages the ring does not have)."""
    layout = module.attr("state_layout", "paged")
    ring = module.find(RING_OP)
    if ring is None:
        if layout == "ring":
            raise fail(module, None, "state_layout", layout, f"a ring module pools through {RING_OP}")
        return
    if layout != "ring":
        raise fail(module, ring, "name", RING_OP, "belongs to a module with state_layout = \"ring\"")
    window = module.find("cc.window")
    if window is None or window_source(module, window) is not ring:
        raise fail(module, window, "operands", window.operands if window else None,
                   f"the window of a ring module pools from %{ring.result} ({RING_OP})")
    ratio = ring.attr("ratio")
    for key in ("window", "ape_rows"):
        if ring.attr(key) != ratio:
            raise fail(module, ring, key, ring.attr(key),
                       f"must equal ratio={ratio}: the window starts at a multiple of it and never wraps")
    _verify_ring_schedule(module, window, fail)


def _verify_ring_schedule(module: Module, window: Op, fail: Fail) -> None:
    if window.get("page_lookup") not in (None, "row"):
        raise fail(module, window, "page_lookup", window.get("page_lookup"),
                   "must be 'row': a ring window has one state block per request")
    for key, bad in (("l2_prefetch", True), ("stage", "smem")):
        if window.get(key) == bad:
            raise fail(module, window, key, bad, "is a paged-state schedule: a ring window has no pages")
