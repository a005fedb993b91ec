"""c128a_split's arrival order in the interpreter (docs/kernels.md §13): the kd ops of its
merge (compressc/ir/row_split.py) count the ranks' arrivals in this order."""

from __future__ import annotations


def arrival_order(row: int, ctas: int) -> list[int]:
    """The ranks of a row in the order they arrive: rotated by the row, so the last is rank
    (row + ctas - 1) % ctas (any rank may be the one that finishes a row)."""
    return [(row + k) % ctas for k in range(ctas)]
