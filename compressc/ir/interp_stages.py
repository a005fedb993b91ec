"""The interpreter's stages: one function per IR op, mirroring `compressc.kernels.stages*`.

Lane values are NumPy arrays with one row per lane. Until the pooling merge every
thread of the CTA has a row ([threads, E]); after it only split group 0 carries on
([head_lanes, E], row index = thread index = hlane), as in the emitted `if group == 0:`.
A shuffle `shfl_xor(v, mask)` is `v[lane ^ mask]` on such an array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressc.ir.core import Module

F32 = np.float32
LOG2E = F32(1.4426950408889634)  # the kernel's `* LOG2E` rounds the constant to fp32 first


def _ex2(x: np.ndarray) -> np.ndarray:
    """2^x in fp32 (the kernel's ex2.approx.ftz is within 2 ulp of it; -inf -> 0)."""
    return np.exp2(x.astype(F32))


@dataclass
class Memory:
    """The launch's arguments: flat pointer views (writes go through) and scalars."""

    ptrs: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, int | float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.ptrs[name]

    def scalar(self, name: str) -> int:
        return int(self.scalars[name])


@dataclass(slots=True)
class Lanes:
    """One CTA's state while it runs one active row."""

    module: Module
    elems: int
    head_lanes: int
    split: int
    threads: int
    mem: Memory
    row: int
    pos: int
    req: int
    kv_slot: int
    cluster: int = 1  # CTAs pooling the row's window together (rank r: threads r*threads..): the program's
    # kd.cluster_rank / kd.split_rank `ctas`
    m: np.ndarray | None = None  # online softmax max / sum / weighted sum, [threads, E]
    l: np.ndarray | None = None  # noqa: E741
    a: np.ndarray | None = None
    x: np.ndarray | None = None  # pooled (or loaded) fp32 values, [head_lanes, E]
    y: np.ndarray | None = None  # normed, then rotated on rope lanes
    q: np.ndarray | None = None  # bf16-rounded y
    e8: np.ndarray | None = None  # UE8M0 exponent byte per lane (equal within a quant group)
    inv: np.ndarray | None = None
    # the lane-level row ops' state (compressc/ir/interp_row.py): registers by the emitter's
    # names, the CTA's static smem (fp32 words), the lanes of the current store region, and
    # whether an smem write awaits its barrier
    regs: dict = field(default_factory=dict)
    smem: np.ndarray | None = None
    live: np.ndarray | None = None
    unpublished: bool = False
    stage: Any = None  # the CTA's staged window slots (compressc/ir/interp_stage.py), with regs["stg"]

    @property
    def col(self) -> np.ndarray:
        """First channel of each group-0 lane: `col = hlane * E`."""
        return np.arange(self.head_lanes) * self.elems

    def span(self, start: np.ndarray) -> np.ndarray:
        """[lanes, E] element indices start + 0 .. start + E - 1."""
        return np.asarray(start)[:, None] + np.arange(self.elems)


# -- the online softmax (the window's kd ops, compressc/ir/interp_window.py) -----------------
def _batch(m, l, a, batch, present, guarded: bool):  # noqa: E741
    """One batch of rows: its max, one rescale, then each present row's term (fp32 each op).
    `guarded` (a window that can start before position 0, as the emitter guards it): a lane
    with no present row so far (m stays -inf) is left as it is."""
    m_new = m
    for (_, sc), here in zip(batch, present, strict=True):
        m_new = np.where(here, np.fmax(m_new, sc), m_new)
    live = m_new > -np.inf if guarded else np.ones_like(m_new, dtype=bool)
    with np.errstate(invalid="ignore"):
        alpha = _ex2((m - m_new) * LOG2E)
        l_new, a_new = l * alpha, a * alpha
        for (kv, sc), here in zip(batch, present, strict=True):
            p = _ex2((sc - m_new) * LOG2E)
            l_new, a_new = np.where(here, l_new + p, l_new), np.where(here, a_new + p * kv, a_new)
    return np.where(live, m_new, m), np.where(live, l_new, l), np.where(live, a_new, a)


def _online(m, l, a, score, value, present):  # noqa: E741
    """One online-softmax update, each op rounded to fp32; absent rows leave (m, l, a)."""
    with np.errstate(invalid="ignore"):
        m_new = np.fmax(m, score)  # PTX max.f32
        alpha = _ex2((m - m_new) * LOG2E)
        p = _ex2((score - m_new) * LOG2E)
        l_new, a_new = l * alpha + p, a * alpha + p * value
    return np.where(present, m_new, m), np.where(present, l_new, l), np.where(present, a_new, a)


def _merge(m, l, a, mg, lg, ag):  # noqa: E741
    """Fold one partial (mg, lg, ag) into (m, l, a), each op rounded to fp32.

    A partial whose rows are all absent (C4 sequence start) has m = -inf: skipped, as
    (-inf) - (-inf) would make alpha NaN. Skipping it is exact otherwise."""
    live = mg > -np.inf
    with np.errstate(invalid="ignore"):
        m_new = np.fmax(m, mg)
        alpha, beta = _ex2((m - m_new) * LOG2E), _ex2((mg - m_new) * LOG2E)
        l_new, a_new = l * alpha + lg * beta, a * alpha + ag * beta
    return np.where(live, m_new, m), np.where(live, l_new, l), np.where(live, a_new, a)

