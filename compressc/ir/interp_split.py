"""c128a_split's exchange in the interpreter (docs/kernels.md §13, kernels/split_merge.py).

The S CTAs of a row are simulated as one (as a cluster's): each rank's partial is its group
0's registers after the CTA's own merge. Here they go through the workspace as the kernel
moves them: every rank stores its partial into the row's region and counts its arrival
(atom.inc, wrapping to 0 at S - 1), in an arrival order that differs from row to row; the
rank whose arrival sees S - 1 reads the S partials back from the workspace, in rank order.
"""

from __future__ import annotations

import numpy as np

from compressc.ir.core import Op
from compressc.specs.abi import split_workspace_row


def arrival_order(row: int, ctas: int) -> list[int]:
    """The ranks of a row in the order they arrive: rotated by the row, so the last is rank
    (row + ctas - 1) % ctas (any rank may be the one that finishes a row)."""
    return [(row + k) % ctas for k in range(ctas)]


def exchange(lanes, op: Op, parts: list[tuple]) -> list[tuple]:
    """Publish every rank's (m, l, a) [head_lanes, E], count the arrivals, return what the last
    rank reads back; raises AssertionError if the election or the counter reset is wrong."""
    ctas, head = len(parts), int(op.attr("head"))  # type: ignore[arg-type]
    ws = lanes.mem["split_workspace"]
    base = lanes.row * split_workspace_row(head)
    counter = ws[base:base + 1].view(np.uint32)
    at = lanes.span(lanes.col)  # [head_lanes, E] channels of group 0's lanes

    def region(rank: int, k: int) -> np.ndarray:
        return base + 4 + rank * 3 * head + k * head + at

    last = []
    for rank in arrival_order(lanes.row, ctas):
        for k, value in enumerate(parts[rank]):
            ws[region(rank, k)] = value
        old = int(counter[0])
        counter[0] = 0 if old >= ctas - 1 else old + 1  # PTX atom.inc with limit ctas - 1
        last += [rank] if old == ctas - 1 else []
    assert last == [arrival_order(lanes.row, ctas)[-1]], f"row {lanes.row}: elected {last}"
    return [tuple(ws[region(rank, k)].copy() for k in range(3)) for rank in range(ctas)]
