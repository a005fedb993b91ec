"""The interpreter of c128a_split's merge (compressc/passes/lower_row_split.py), as the kernel
moves the partials (docs/kernels.md §13).

The S CTAs of a row are simulated as one (as a cluster's, `lanes.cluster` ranks): each rank's
group 0 (every group without the guard) stores its partial into the row's workspace region;
the ranks then count their arrivals in an order that differs from row to row
(`interp_split.arrival_order`), atom.inc wrapping at the op's `ctas - 1`, each CTA's count
through its smem flag; exactly one must see S - 1. That CTA continues the row (simulated as
CTA row 0 of `lanes.smem` and the rank-0 registers): its threads load every rank's partial of
their `me` channels, fold them in rank order and hand the merged (sum, weighted sum) to group
0's lanes, directly or through smem (NaN until written; two threads storing one word before
the barrier is an error: which value lands would be a race).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compressc.ir import interp_split
from compressc.ir.core import Op
from compressc.ir.interp_stages import F32, Lanes
from compressc.ir.row_pool import _fold_all, _regs


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _error(message: str) -> Exception:
    from compressc.ir.interp_row import LaneError

    return LaneError(message)


def _part(head: int, rank: int, k: int) -> int:
    """Part k (max, sum, weighted sum) of `rank`'s partial, past the row's 4-word counter."""
    return 4 + rank * 3 * head + k * head


def _publish_partial(lanes: Lanes, op: Op) -> None:
    head, ws = _a(op, "head"), lanes.mem["split_workspace"]
    lanes.regs["ws_base"] = base = lanes.row * _a(op, "row_bytes") // 4
    at = lanes.span(lanes.col)
    groups = 1 if op.attr("group0") else lanes.split  # unguarded, every group stores: the last one's stay
    for rank in range(lanes.cluster):
        for g in range(groups):
            for k, v in enumerate(_regs(lanes)):
                ws[base + _part(head, rank, k) + at] = v[rank, g]


def _arrive_last(lanes: Lanes, op: Op) -> None:
    ctas, flag, base = _a(op, "ctas"), _a(op, "flag"), lanes.regs["ws_base"]
    if flag >= lanes.smem.shape[1]:  # type: ignore[union-attr]
        raise _error(f"{op.name}: flag {flag} is past the CTA's {lanes.module.get('smem_bytes')} bytes of "
                     "smem")
    counter = lanes.mem["split_workspace"][base:base + 1].view(np.uint32)
    elected = []
    for rank in interp_split.arrival_order(lanes.row, lanes.cluster):
        old = int(counter[0])
        counter[0] = 0 if old >= ctas - 1 else old + 1  # PTX atom.inc with limit ctas - 1
        lanes.smem[rank, flag] = F32(old)  # type: ignore[index]
        elected += [rank] if lanes.smem[rank, flag] == F32(ctas - 1) else []  # type: ignore[index]
    if len(elected) != 1:
        raise _error(f"row {lanes.row}: elected {elected} (exactly one CTA must finish the row)")
    if counter[0] != 0:
        raise _error(f"row {lanes.row}: the arrival count is left at {counter[0]}, not 0")
    lanes.regs["last_rank"] = elected[0]


def _if_last(lanes: Lanes, op: Op, walk: Callable) -> None:
    """The elected CTA continues the row: its smem becomes CTA row 0's, where the rest runs."""
    lanes.smem[0] = lanes.smem[lanes.regs["last_rank"]].copy()  # type: ignore[index]
    walk()


def _split_lanes(lanes: Lanes, op: Op) -> None:
    lanes.regs["rP"] = np.full((lanes.threads, _a(op, "me"), 3, _a(op, "ctas")), np.nan, F32)
    lanes.regs["tlive"] = np.ones(lanes.threads, dtype=bool)


def _if_tidx(lanes: Lanes, op: Op, walk: Callable) -> None:
    outer = lanes.regs["tlive"]
    lanes.regs["tlive"] = outer & (np.arange(lanes.threads) < _a(op, "below"))
    walk()
    lanes.regs["tlive"] = outer


def _load_partials(lanes: Lanes, op: Op) -> None:
    """Every rank's partial of each live thread's channels mcol .. mcol + me - 1, from the workspace."""
    head, me, regs = _a(op, "head"), _a(op, "me"), lanes.regs
    live = np.flatnonzero(regs["tlive"])
    at = regs["ws_base"] + (live * me)[:, None] + np.arange(me)
    ws = lanes.mem["split_workspace"]
    for rank in range(_a(op, "ctas")):
        for k in range(3):
            regs["rP"][live, :, k, rank] = ws[at + _part(head, rank, k)]


def _fold_partials(lanes: Lanes, op: Op) -> None:
    rP = lanes.regs["rP"]
    q = (rP[:, :, 0, 0], rP[:, :, 1, 0], rP[:, :, 2, 0])
    for k in range(1, _a(op, "ctas")):
        q = _fold_all(*q, rP[:, :, 0, k], rP[:, :, 1, k], rP[:, :, 2, k])
    lanes.regs["qL"], lanes.regs["qA"] = q[1], q[2]


def _merged_to_lanes(lanes: Lanes, op: Op) -> None:
    """mcol == col: each thread's merged channels are its own lane's."""
    _, L, A = _regs(lanes)
    if lanes.regs["qL"].shape != L[0, 0].shape:
        raise _error(f"{op.name}: {lanes.threads} threads x {_a(op, 'me')} channel(s) are not group 0's "
                     f"{lanes.head_lanes} lanes x {lanes.elems}: a thread's channels are not its lane's")
    L[0, 0], A[0, 0] = lanes.regs["qL"], lanes.regs["qA"]


def _merged_to_smem(lanes: Lanes, op: Op) -> None:
    """Each live thread stores its channels' merged (sum, weighted sum) at slot + mcol (+ head)."""
    slot, head, me, smem = _a(op, "slot"), _a(op, "head"), _a(op, "me"), lanes.smem
    live = np.flatnonzero(lanes.regs["tlive"])
    mcol = (live * me)[:, None] + np.arange(me)
    if slot + head + int(mcol.max()) >= smem.shape[1]:  # type: ignore[union-attr]
        raise _error(f"{op.name}: slot {slot} reaches past the CTA's {lanes.module.get('smem_bytes')} bytes")
    words = np.concatenate([slot + mcol, slot + head + mcol]).reshape(-1)
    shared, count = np.unique(words, return_counts=True)
    if count.max() > 1:  # two threads store one word before the barrier: which value lands is a race
        raise _error(f"{op.name}: threads store smem word {int(shared[count > 1][0])} twice before the "
                     f"barrier ({len(live)} threads x {me} channel(s) write past the {head} of the sums)")
    smem[0, slot + mcol] = lanes.regs["qL"][live]  # type: ignore[index]
    smem[0, slot + head + mcol] = lanes.regs["qA"][live]  # type: ignore[index]


def _lanes_from_smem(lanes: Lanes, op: Op) -> None:
    """After the barrier group 0's lanes read their channels' at slot + col (+ head)."""
    slot, head, smem = _a(op, "slot"), _a(op, "head"), lanes.smem
    _, L, A = _regs(lanes)
    col = lanes.span(lanes.col)
    L[0, 0], A[0, 0] = smem[0, slot + col], smem[0, slot + head + col]  # type: ignore[index]


SPLIT_RUN: dict[str, Callable[[Lanes, Op], None]] = {
    "kd.publish_partial": _publish_partial,
    "kd.arrive_last": _arrive_last,
    "kd.split_lanes": _split_lanes,
    "kd.load_partials": _load_partials,
    "kd.fold_partials": _fold_partials,
    "kd.merged_to_lanes": _merged_to_lanes,
    "kd.merged_to_smem": _merged_to_smem,
    "kd.lanes_from_smem": _lanes_from_smem,
}
SPLIT_BRANCHES: dict[str, Callable[[Lanes, Op, Callable], None]] = {
    "kd.if_last": _if_last, "kd.if_tidx": _if_tidx}
