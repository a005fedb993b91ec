"""The interpreter of the window's kd ops (compressc/passes/lower_row_window.py), thread by thread.

Every thread of the CTA (of every CTA of a cluster or a split row, simulated as one: thread
`rank * threads + tidx`) is a row of the arrays: its online-softmax registers (`lanes.m/l/a`,
[threads, E]), its window position `i0`, its looked-up page `wpage`, its batch `rKV`/`rSC`
([threads, E, rows]). A shuffle `shfl_idx(v, k)` reads lane k of the thread's warp; a vector
load must be aligned to its width (`cute.assume(divby=vec)` promises it); the staged window
reads its rows back from the CTA's dynamic smem slot `stg` (compressc/ir/interp_stage.py),
where a copy nobody waited for is an error. Cache hints and the L2 prefetch change no value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compressc.ir.core import Op
from compressc.ir.interp_ring import load_row as ring_load_row
from compressc.ir.interp_stages import F32, Lanes, _batch, _online
from compressc.specs.target import WARP


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _error(message: str) -> Exception:
    from compressc.ir.interp_row import LaneError

    return LaneError(message)


def _ids(lanes: Lanes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, group, tidx) of every simulated thread."""
    tid = np.arange(lanes.threads * lanes.cluster)
    return tid // lanes.threads, (tid % lanes.threads) // lanes.head_lanes, tid % lanes.threads


def _col(lanes: Lanes) -> np.ndarray:
    return (_ids(lanes)[2] % lanes.head_lanes) * lanes.elems


def shfl_idx(op: Op, value: np.ndarray, src_lane: int) -> np.ndarray:
    """shfl.sync.idx: every thread reads lane `src_lane` of its own warp."""
    if not 0 <= src_lane < WARP:
        raise _error(f"{op.name}: shfl_idx from lane {src_lane}, outside the 32-lane warp")
    return value[(np.arange(len(value)) // WARP) * WARP + src_lane]


def _first(lanes: Lanes, op: Op) -> np.ndarray:
    """Each thread's first window row: its rank's and its group's part."""
    rank, group, _ = _ids(lanes)
    rows, groups = _a(op, "rows"), _a(op, "groups")
    return rank * (rows * groups) * (_a(op, "ranks") > 1) + group * rows * (groups > 1)


def _window_start(lanes: Lanes, op: Op) -> None:
    lanes.regs["s0"] = lanes.pos - (_a(op, "window") - 1)


def _softmax_init(lanes: Lanes, op: Op) -> None:
    shape = (lanes.threads * lanes.cluster, _a(op, "elems"))
    lanes.m, lanes.l, lanes.a = np.full(shape, -np.inf, F32), np.zeros(shape, F32), np.zeros(shape, F32)


def _table_page(lanes: Lanes, q: np.ndarray, valid: np.ndarray) -> np.ndarray:
    mem = lanes.mem
    shift = mem.scalar("state_block_shift")
    at = lanes.req * mem.scalar("block_table_stride") + np.where(valid, q >> shift, 0)
    return np.where(valid, mem["block_table"][at], 0).astype(np.int64)


def _lane_pages(lanes: Lanes, op: Op) -> None:
    """Lane i of each group looks up the page of its group's window row i."""
    lane = _ids(lanes)[2] % WARP
    wq = lanes.regs["s0"] + _first(lanes, op) + lane
    wq = np.where(wq >= 0, wq, 0) if op.attr("absent") else wq
    lanes.regs["wpage"] = _table_page(lanes, wq, lane < _a(op, "rows"))


def _window_chunks(lanes: Lanes, op: Op, walk: Callable) -> None:
    batch = _a(op, "batch")
    for chunk in range(_a(op, "chunks")):
        lanes.regs["i0"], lanes.regs["k0"] = _first(lanes, op) + chunk * batch, chunk * batch
        walk()


def _load_batch(lanes: Lanes, op: Op, walk: Callable) -> None:
    shape = (lanes.threads * lanes.cluster, _a(op, "elems"), _a(op, "rows"))
    lanes.regs["rKV"], lanes.regs["rSC"] = np.full(shape, np.nan, F32), np.full(shape, np.nan, F32)
    for r in range(_a(op, "rows")):
        lanes.regs["r"] = r
        walk()


def _paged_row(lanes: Lanes, op: Op) -> None:
    """Window row i0 + r of every thread from the paged state (absent rows read row 0)."""
    mem, regs, width = lanes.mem, lanes.regs, _a(op, "width")
    i = regs["i0"] + regs["r"]
    q = regs["s0"] + i
    q = np.where(q >= 0, q, 0) if op.attr("absent") else q
    if op.attr("page") == "lane":
        page = shfl_idx(op, regs["wpage"], regs["k0"] + regs["r"])
    else:
        page = _table_page(lanes, q, np.ones(len(q), dtype=bool))
    stream = 0 if _a(op, "streams") == 1 else (i // _a(op, "ratio")) * _a(op, "head")
    in_page = (1 << mem.scalar("state_block_shift")) - 1
    base = page * mem.scalar("state_page_stride") + (q & in_page) * 2 * width + stream + _col(lanes)
    _aligned(op, base, base + width)
    state, r = mem["state_cache"], regs["r"]
    regs["rKV"][:, :, r], regs["rSC"][:, :, r] = state[lanes.span(base)], state[lanes.span(base + width)]


def _aligned(op: Op, *starts: np.ndarray) -> None:
    vec = _a(op, "vec")
    for start in starts:
        if np.any(start % vec):
            first = int(start[start % vec != 0][0])
            raise _error(f"{op.name}: a {vec * 32}-bit load from fp32 element {first}, not a multiple "
                         f"of {vec} (vec = {vec} promises it)")


def _ring_row(lanes: Lanes, op: Op) -> None:
    regs = lanes.regs
    kv, sc = ring_load_row(lanes, _a(op, "head"), _a(op, "width"), regs["i0"] + regs["r"], _col(lanes))
    regs["rKV"][:, :, regs["r"]], regs["rSC"][:, :, regs["r"]] = kv, sc


def _online_update(lanes: Lanes, op: Op) -> None:
    """The batch's updates, in the emitted order: one rescale per batch or one update per row;
    with `absent` only rows from position 0 on count (without, every row does)."""
    regs, rows = lanes.regs, _a(op, "rows")
    batch = [(regs["rKV"][:, :, r], regs["rSC"][:, :, r]) for r in range(rows)]
    present = [_present(lanes, op, regs["i0"] + r) for r in range(rows)]
    m, l, a = lanes.m, lanes.l, lanes.a  # noqa: E741
    if op.attr("rescale") == "batch":
        m, l, a = _batch(m, l, a, batch, present, guarded=bool(op.attr("absent")))  # noqa: E741
    else:
        for (kv, sc), here in zip(batch, present, strict=True):
            m, l, a = _online(m, l, a, sc, kv, here)  # noqa: E741
    lanes.m, lanes.l, lanes.a = m, l, a


def _present(lanes: Lanes, op: Op, i: np.ndarray | int) -> np.ndarray:
    here = np.broadcast_to(lanes.regs["s0"] + i >= 0, (lanes.threads * lanes.cluster,))
    return (here if op.attr("absent") else np.ones_like(here))[:, None]


def _smem_rows(lanes: Lanes, op: Op, walk: Callable) -> None:
    """Row r of each thread's smem slot `stg`, as it copied it (two streams of `copies` x 4 fp32)."""
    if lanes.stage is None or "stg" not in lanes.regs:
        raise _error(f"{op.name}: reads a staged window, but no kd.staged_rows copied one")
    copies, threads, tidx = _a(op, "copies"), _a(op, "threads"), np.arange(_a(op, "threads"))
    at = lanes.regs["stg"] * _a(op, "slot_words") + tidx * 4
    four = np.arange(4)
    for r in range(_a(op, "rows")):
        frags = []
        for f in range(2):
            words = [at[:, None] + (r * 2 * copies + f * copies + h) * 4 * threads + four
                     for h in range(copies)]
            frags.append(np.concatenate([lanes.stage.read(w, op) for w in words], axis=1))
        lanes.regs["rKV"], lanes.regs["rSC"], lanes.regs["r"] = frags[0], frags[1], r
        walk()


def _online_row(lanes: Lanes, op: Op) -> None:
    here = _present(lanes, op, lanes.regs["r"])
    lanes.m, lanes.l, lanes.a = _online(lanes.m, lanes.l, lanes.a, lanes.regs["rSC"], lanes.regs["rKV"], here)


def _nothing(lanes: Lanes, op: Op) -> None:
    """The page table's view, the ring's rows (cc.ring_state found them) and an L2 prefetch
    change no value a thread holds."""


WINDOW_RUN: dict[str, Callable[[Lanes, Op], None]] = {
    "kd.window_start": _window_start,
    "kd.page_table": _nothing,
    "kd.ring_rows": _nothing,
    "kd.softmax_init": _softmax_init,
    "kd.lane_pages": _lane_pages,
    "kd.l2_prefetch": _nothing,
    "kd.paged_row": _paged_row,
    "kd.ring_row": _ring_row,
    "kd.online_update": _online_update,
    "kd.online_row": _online_row,
}
# the window's loops: (lanes, op, walk the body once)
WINDOW_LOOPS: dict[str, Callable[[Lanes, Op, Callable], None]] = {
    "kd.window_chunks": _window_chunks,
    "kd.load_batch": _load_batch,
    "kd.smem_rows": _smem_rows,
}
