"""The interpreter of the pooling merge's kd ops, thread by thread of every CTA of a cluster.

The window leaves each thread's online-softmax registers (rM, rL, rA) in `lanes.m/l/a`,
row `rank * threads + group * head_lanes + hlane`. Each CTA's static shared memory is one
row of `lanes.smem` (fp32 words, NaN until written): the split groups store their partials
into their CTA's slots, group 0 folds them in group order; then ranks 1..S-1's group 0
stores its partial into rank 0's smem (DSMEM) and rank 0 folds them in rank order. A slot
read that no store wrote is NaN, so a wrong slot gives wrong bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compressc.ir.core import Op
from compressc.ir.interp_stages import LOG2E, Lanes, _ex2, _merge


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _regs(lanes: Lanes) -> list[np.ndarray]:
    """(rM, rL, rA) as [ranks, groups, head_lanes, E] views (writes go through)."""
    shape = (lanes.cluster, lanes.split, lanes.head_lanes, lanes.elems)
    return [v.reshape(shape) for v in (lanes.m, lanes.l, lanes.a)]  # type: ignore[union-attr]


def _slots(lanes: Lanes, op: Op, part: int) -> np.ndarray:
    """[head_lanes, E] word indices slot + part * head + col + e, per thread of a group."""
    return _a(op, "slot") + part * _a(op, "head") + lanes.span(lanes.col)


def _check(lanes: Lanes, op: Op, words: np.ndarray, reads: bool) -> None:
    from compressc.ir.interp_row import LaneError

    if int(words.max()) >= lanes.smem.shape[1]:  # type: ignore[union-attr]
        raise LaneError(f"{op.name}: slot {op.attr('slot')} reaches fp32 word {int(words.max())}, past the "
                        f"CTA's {lanes.module.get('smem_bytes')} bytes of static smem")
    if reads and lanes.unpublished:
        raise LaneError(f"{op.name}: reads smem slot {op.attr('slot')} before a barrier publishes it")


def _put(lanes: Lanes, op: Op, rank_to: int, part: int, values: list[np.ndarray]) -> None:
    """(max, sum, weighted sum) into slot `part` of CTA `rank_to`'s region, stride apart."""
    at, stride = _slots(lanes, op, part), _a(op, "stride")
    _check(lanes, op, at + 2 * stride, reads=False)
    for k, value in enumerate(values):
        lanes.smem[rank_to, at + k * stride] = value  # type: ignore[index]
    lanes.unpublished = True


def _fold(lanes: Lanes, op: Op, rank: int, part: int, skip_absent: bool) -> None:
    """Group 0 of `rank` folds the partial in slot `part` of its CTA's smem into its registers;
    `skip_absent`: a partial of absent rows only (m = -inf) is skipped, as the kernel does."""
    at, stride = _slots(lanes, op, part), _a(op, "stride")
    _check(lanes, op, at + 2 * stride, reads=True)
    smem, (M, L, A) = lanes.smem, _regs(lanes)
    partial = (smem[rank, at], smem[rank, at + stride], smem[rank, at + 2 * stride])  # type: ignore[index]
    fold = _merge if skip_absent else _fold_all
    M[rank, 0], L[rank, 0], A[rank, 0] = fold(M[rank, 0], L[rank, 0], A[rank, 0], *partial)


def _fold_all(m, l, a, mg, lg, ag):  # noqa: E741
    """The unconditional fold (no partial can be all absent)."""
    with np.errstate(invalid="ignore"):
        m_new = np.fmax(m, mg)
        alpha, beta = _ex2((m - m_new) * LOG2E), _ex2((mg - m_new) * LOG2E)
        return m_new, l * alpha + lg * beta, a * alpha + ag * beta


def _put_partials(lanes: Lanes, op: Op) -> None:
    M = _regs(lanes)
    for rank in range(lanes.cluster):
        for g in range(1, lanes.split):
            _put(lanes, op, rank, g, [v[rank, g] for v in M])


def _fold_groups(lanes: Lanes, op: Op) -> None:
    for rank in range(lanes.cluster):
        for g in range(1, _a(op, "groups")):
            _fold(lanes, op, rank, g, skip_absent=True)


def _dsmem_put_partials(lanes: Lanes, op: Op) -> None:
    M = _regs(lanes)
    groups = 1 if op.attr("group0") else lanes.split  # unguarded, every group stores: the last one's stay
    for rank in range(1, lanes.cluster):
        for g in range(groups):
            _put(lanes, op, 0, rank - 1, [v[rank, g] for v in M])


def _fold_ranks(lanes: Lanes, op: Op) -> None:
    for k in range(_a(op, "ranks") - 1):
        _fold(lanes, op, 0, k, skip_absent=bool(op.attr("absent")))


def _cluster_barrier(lanes: Lanes, op: Op) -> None:
    lanes.unpublished = False


def _pooled(lanes: Lanes, op: Op) -> None:
    """Rank 0's group 0 carries on with x = a / l (IEEE division)."""
    M, L, A = _regs(lanes)
    with np.errstate(invalid="ignore", divide="ignore"):  # a poisoned (NaN) partial stays NaN
        lanes.x = A[0, 0] / L[0, 0]


def _nothing(lanes: Lanes, op: Op) -> None:
    """From here on only group 0 (rank 0) runs: the registers after kd.pooled are its."""


POOL_RUN: dict[str, Callable[[Lanes, Op], None]] = {
    "kd.put_partials": _put_partials,
    "kd.fold_groups": _fold_groups,
    "kd.cluster_barrier": _cluster_barrier,
    "kd.dsmem_put_partials": _dsmem_put_partials,
    "kd.fold_ranks": _fold_ranks,
    "kd.pooled": _pooled,
    "kd.only_group0": _nothing,
    "kd.only_rank0": _nothing,
    "kd.only_last": _nothing,
}
