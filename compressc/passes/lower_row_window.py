"""lower-row's window: the gather of a row's window with its online softmax as kd ops.

Registers, by the emitter's names: `rM`, `rL`, `rA` the online softmax's (max, sum, weighted
sum) per channel of a lane, `rKV`, `rSC` a batch's (value, score) rows. A window in
registers is `kd.window_start`, its rows' source (`kd.page_table` or `kd.ring_rows`),
`kd.softmax_init`, the lane page lookups (`kd.lane_pages`, `kd.l2_prefetch`), then
`kd.window_chunks` .. `kd.end_loop` around each batch: `kd.load_batch` .. `kd.end_loop`
around one row's loads (`kd.paged_row` or `kd.ring_row`, with their vector width and cache
hint), then `kd.online_update {rescale}`. A window staged in smem (smem-stage) is read back
row by row: `kd.smem_rows` .. `kd.end_loop` around `kd.online_row`; its copies are the row
loop's (`kd.stage_issue`, `kd.staged_wait`: compressc/passes/lower_grid.py).
"""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields
from compressc.ir.ring import window_source
from compressc.ir.schedule import Schedule
from compressc.passes.smem_stage import SLOTS

END_LOOP = Op("kd.end_loop")
COPY_FP32 = 4  # a cp.async copies 16 bytes


def _kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def geometry(op: Op) -> dict[str, object]:
    """Where window row r lies in the paged state: the C4 window's two streams (rows 0 ..
    ratio - 1 the first head's channels, then the second's); rows before position 0 (absent)
    exist only where the window overlaps the previous one (window > ratio)."""
    window, ratio = _a(op, "window"), _a(op, "ratio")
    return {"absent": window > ratio, "streams": 1 if window == ratio else 2, "ratio": ratio,
            "head": _a(op, "head"), "width": _a(op, "state_width")}


def stage_facts(module: Module, op: Op) -> dict[str, object]:
    """The staged window's copies (smem-stage): each lane copies its channels of every row,
    `copies` 16-byte copies per stream, into a slot of `slot_bytes` of dynamic smem."""
    sched = Schedule.of(module)
    copies, rows = sched.elems // COPY_FP32, int(op.get("rows_in_flight"))  # type: ignore[arg-type]
    slot_bytes = rows * 2 * copies * 16 * sched.threads
    assert SLOTS * slot_bytes == sched.smem_dynamic, "smem-stage sized the stage"
    return {"window": _a(op, "window"), **geometry(op), "copies": copies, "threads": sched.threads,
            "slot_bytes": slot_bytes}


def window_ops(module: Module, op: Op) -> list[Op]:
    """The kd ops of `op` (a cc.window) under the module's schedule."""
    elems, start = Schedule.of(module).elems, _kd("window_start", window=_a(op, "window"))
    init = _kd("softmax_init", elems=elems)
    if op.get("stage") == "smem":
        facts = stage_facts(module, op)
        rows = _kd("smem_rows", rows=_a(op, "window"), elems=elems, copies=facts["copies"],
                   threads=facts["threads"], slot_words=int(facts["slot_bytes"]) // 4)  # type: ignore[call-overload]
        return [start, init, rows, _kd("online_row", elems=elems, absent=facts["absent"]), END_LOOP]
    ring = window_source(module, op) is not None
    source = _kd("ring_rows" if ring else "page_table")
    return [start, source, init, *_pages(module, op), *_chunks(module, op)]


def _parts(module: Module, op: Op) -> dict[str, int]:
    """A lane's part of the window: rank r of a cluster (or a split's CTAs) and group g pool
    rows (r * groups + g) * rows .. + rows - 1."""
    sched = Schedule.of(module)
    return {"rows": _a(op, "window") // sched.split // sched.cluster, "groups": sched.split,
            "ranks": sched.cluster}


def _pages(module: Module, op: Op) -> list[Op]:
    if op.get("page_lookup") != "lane":
        return []
    parts = _parts(module, op)
    ops = [_kd("lane_pages", **parts, absent=geometry(op)["absent"])]
    if op.get("l2_prefetch"):
        ops.append(_kd("l2_prefetch", rows=parts["rows"], row_bytes=2 * _a(op, "state_width") * 4))
    return ops


def _chunks(module: Module, op: Op) -> list[Op]:
    """The group's rows a batch of `rows_in_flight` at a time: its loads, then its updates."""
    sched, parts, batch = Schedule.of(module), _parts(module, op), int(op.get("rows_in_flight"))  # type: ignore[arg-type]
    lane = op.get("page_lookup") == "lane"
    chunks = _kd("window_chunks", chunks=parts["rows"] // batch, batch=batch, **parts, lane_pages=lane)
    vec, hint = int(op.get("vector_bits")) // 32, sched.cache_hints or "none"  # type: ignore[arg-type]
    if window_source(module, op) is not None:
        row = _kd("ring_row", elems=sched.elems, vec=vec, head=_a(op, "head"), width=_a(op, "state_width"),
                  cache_hint=hint)
    else:
        row = _kd("paged_row", elems=sched.elems, vec=vec, **geometry(op), page="lane" if lane else "table",
                  cache_hint=hint)
    update = _kd("online_update", elems=sched.elems, rows=batch, absent=geometry(op)["absent"],
                 rescale=str(op.get("rescale", "row")))
    loads = _kd("load_batch", rows=batch, elems=sched.elems, vec=vec)
    return [chunks, loads, row, END_LOOP, update, END_LOOP]


def ring_ops(module: Module, op: Op) -> list[Op]:
    """cc.ring_state: where the row's window starts in this launch and in its ring (a ring row
    is [kv | score + ape], 2 * state_width words)."""
    window, words = _a(op, "window"), 2 * _a(op, "state_width")
    return [_kd("ring_window", window=window), _kd("ring_base", window=window, row_words=words)]
