"""The online C128 merge's row ops (docs/kernels.md §9): one CTA per segment of token rows.

    %seg = cc.segment(%segments)                      the CTA's (row_base, num_rows, read_row,
                                                      emit_token, write_row)
    %acc = cc.online_merge(%kv, %score, %ape, %positions, %run_state, %seg)
                                                      seed (m, l, a) from run_state[read_row] or
                                                      (-inf, 0, 0), then one update per row, in order
    %x = cc.pool_softmax(%acc)                        x = a / l (the family's op, merge "none")
    cc.online_store(%x, %acc, %compressed_kv, %run_state, %seg)
                                                      x into compressed_kv[emit_token] and
                                                      (m, l, a) into run_state[write_row], each if >= 0

Schedule: the thread map (thread-map), `vector_bits` (vectorize) on the merge and the store,
`rows_in_flight` on the merge (rows-in-flight: token rows whose loads are issued before the
first of their updates). The grid is always "rows": one CTA per segment.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields

SEGMENT_FIELDS = ("row_base", "num_rows", "read_row", "emit_token", "write_row")
MAX_ROWS_IN_FLIGHT = 16  # 3 x elems_per_lane fp32 registers a row: 16 rows of 8 are 384

# op name -> spec attributes it must carry (the verifier's table takes these)
ONLINE_ATTRS: dict[str, tuple[str, ...]] = {
    "cc.segment": ("fields",),
    "cc.online_merge": ("head", "ratio", "state_width", "order"),
    "cc.online_store": ("head", "state_width"),
}


def online_ops(head: int, ratio: int) -> list[Op]:
    """The row ops of the online merge of a `head`-channel, ratio-`ratio` layer."""
    width = 3 * head  # run_state row: max | sum | weighted sum
    merge_in = ("kv", "score", "ape", "positions", "run_state", "seg")
    return [
        Op("cc.segment", "seg", ("segments",), fields(fields=len(SEGMENT_FIELDS))),
        Op("cc.online_merge", "acc", merge_in,
           fields(head=head, ratio=ratio, state_width=width, order="ascending")),
        Op("cc.pool_softmax", "x", ("acc",), fields(head=head, order="ascending")),
        Op("cc.online_store", "", ("x", "acc", "compressed_kv", "run_state", "seg"),
           fields(head=head, state_width=width)),
    ]


def online_problem(module: Module) -> tuple[Op | None, str, object, str] | None:
    """What breaks the schedule rules of a segmented module, as (op, field, value, rule)."""
    merge = module.find("cc.online_merge")
    if merge is None:
        return None
    grid = module.get("grid")
    if grid not in (None, "rows"):
        rule = "must be 'rows': the online merge runs one CTA per segment (docs/kernels.md §9.1)"
        return None, "grid", grid, rule
    rows = merge.get("rows_in_flight")
    if rows is not None and not (isinstance(rows, int) and 1 <= rows <= MAX_ROWS_IN_FLIGHT):
        rule = f"must be 1..{MAX_ROWS_IN_FLIGHT} token rows loaded before their updates"
        return merge, "rows_in_flight", rows, rule
    return None
