"""The interpreter's stages: one function per IR op, mirroring `compressc.kernels.stages*`.

Lane values are NumPy arrays with one row per lane. Until the pooling merge every
thread of the CTA has a row ([threads, E]); after it only split group 0 carries on
([head_lanes, E], row index = thread index = hlane), as in the emitted `if group == 0:`.
A shuffle `shfl_xor(v, mask)` is `v[lane ^ mask]` on such an array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from compressc.ir import interp_ring, interp_split
from compressc.ir.core import Module, Op
from compressc.ir.ring import window_source
from compressc.numerics import np_bf16_rne, np_e2m1_encode, np_e4m3_encode
from compressc.specs.target import WARP

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
    cluster: int = 1  # CTAs of a cluster pooling the row's window together (rank r: threads r*threads..)
    m: np.ndarray | None = None  # online softmax max / sum / weighted sum, [threads, E]
    l: np.ndarray | None = None  # noqa: E741
    a: np.ndarray | None = None
    x: np.ndarray | None = None  # pooled (or loaded) fp32 values, [head_lanes, E]
    y: np.ndarray | None = None  # normed, then rotated on rope lanes
    q: np.ndarray | None = None  # bf16-rounded y
    e8: np.ndarray | None = None  # UE8M0 exponent byte per lane (equal within a quant group)
    inv: np.ndarray | None = None
    ring: tuple[int, int, int] | None = None  # (t0, ring_split, ring_base) of a ring window

    @property
    def col(self) -> np.ndarray:
        """First channel of each group-0 lane: `col = hlane * E`."""
        return np.arange(self.head_lanes) * self.elems

    def span(self, start: np.ndarray) -> np.ndarray:
        """[lanes, E] element indices start + 0 .. start + E - 1."""
        return np.asarray(start)[:, None] + np.arange(self.elems)


# -- cc.window + cc.pool_softmax -----------------------------------------------------
def window(lanes: Lanes, op: Op) -> None:
    """Every thread pools its split group's rows ascending, a batch of loads at a time.

    A cluster's CTAs are simulated as one: thread rank * threads + tid is in group
    rank * split + tid // head_lanes, which pools window part (rank * split + group).
    """
    W, ratio = int(op.attr("window")), int(op.attr("ratio"))  # type: ignore[arg-type]
    rows, per = int(op.get("rows_in_flight")), W // (lanes.split * lanes.cluster)  # type: ignore[arg-type]
    tid = np.arange(lanes.threads * lanes.cluster)
    group, col = tid // lanes.head_lanes, (tid % lanes.head_lanes) * lanes.elems
    s0 = lanes.pos - (W - 1)
    shape = (lanes.threads * lanes.cluster, lanes.elems)
    m, l, a = np.full(shape, -np.inf, F32), np.zeros(shape, F32), np.zeros(shape, F32)  # noqa: E741
    source = window_source(lanes.module, op)
    load = _load_row if source is None else ROW_LOADS[source.name]
    for chunk in range(per // rows):
        i0 = group * per + chunk * rows
        batch = [load(lanes, op, s0, i0 + r, col, absent=W > ratio) for r in range(rows)]
        present = [(s0 + i0 + r >= 0)[:, None] for r in range(rows)]
        if op.get("rescale") == "batch":
            m, l, a = _batch(m, l, a, batch, present, guarded=W > ratio)  # noqa: E741
            continue
        for r, (kv, sc) in enumerate(batch):
            m, l, a = _online(m, l, a, sc, kv, present[r])  # noqa: E741
    lanes.m, lanes.l, lanes.a = m, l, a


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


def _load_row(lanes: Lanes, op: Op, s0: int, i: np.ndarray, col: np.ndarray, absent: bool) -> tuple:
    """(kv, score) [threads, E] of window row i of each thread (absent rows read row 0)."""
    mem = lanes.mem
    ratio, W = int(op.attr("ratio")), int(op.attr("window"))  # type: ignore[arg-type]
    head, width = int(op.attr("head")), int(op.attr("state_width"))  # type: ignore[arg-type]
    shift = mem.scalar("state_block_shift")
    q = s0 + i
    q = np.where(q >= 0, q, 0) if absent else q
    page = mem["block_table"][lanes.req * mem.scalar("block_table_stride") + (q >> shift)].astype(np.int64)  # type: ignore
    stream = 0 if ratio == W else (i // ratio) * head
    base = page * mem.scalar("state_page_stride") + (q & ((1 << shift) - 1)) * 2 * width + stream + col  # type: ignore
    state = mem["state_cache"]
    return state[lanes.span(base)], state[lanes.span(base + width)]


def _online(m, l, a, score, value, present):  # noqa: E741
    """One online-softmax update, each op rounded to fp32; absent rows leave (m, l, a)."""
    with np.errstate(invalid="ignore"):
        m_new = np.fmax(m, score)  # PTX max.f32
        alpha = _ex2((m - m_new) * LOG2E)
        p = _ex2((score - m_new) * LOG2E)
        l_new, a_new = l * alpha + p, a * alpha + p * value
    return np.where(present, m_new, m), np.where(present, l_new, l), np.where(present, a_new, a)


def pool(lanes: Lanes, op: Op) -> None:
    """In each CTA group 0 merges groups 1..K-1 in group order through smem; in a cluster,
    rank 0 then merges ranks 1..S-1's results in rank order; then x = a / l."""
    K, S, hl, E = lanes.split, lanes.cluster, lanes.head_lanes, lanes.elems
    # thread = (rank * K + g) * hl + hlane
    M, L, A = (v.reshape(S, K, hl, E) for v in (lanes.m, lanes.l, lanes.a))
    parts = []
    for rank in range(S):
        part = (M[rank, 0], L[rank, 0], A[rank, 0])
        for g in range(1, K):
            part = _merge(*part, M[rank, g], L[rank, g], A[rank, g])
        parts.append(part)
    if lanes.module.get("split_merge") == "global":
        parts = interp_split.exchange(lanes, op, parts)
    m, l, a = parts[0]  # noqa: E741
    for part in parts[1:]:
        m, l, a = _merge(m, l, a, *part)  # noqa: E741
    lanes.x = a / l


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


def store_rows(lanes: Lanes, op: Op) -> None:
    lanes.mem["compressed_kv"][_row_span(lanes, op)] = lanes.x


def load_rows(lanes: Lanes, op: Op) -> None:
    lanes.x = lanes.mem["compressed_kv"][_row_span(lanes, op)].astype(F32)


def _row_span(lanes: Lanes, op: Op) -> np.ndarray:
    return lanes.span(lanes.row * int(op.attr("head")) + lanes.col)  # type: ignore[arg-type]


# -- cc.rms_norm, cc.rope ------------------------------------------------------------
def rms_norm(lanes: Lanes, op: Op) -> None:
    """Per-lane sum of squares, the lane_tree butterfly, then per-warp partials in order."""
    x, hl = lanes.x, lanes.head_lanes
    ssq = np.zeros(hl, F32)
    for e in range(lanes.elems):
        ssq = ssq + x[:, e] * x[:, e]
    lane = np.arange(hl)
    for mask in op.get("lane_tree"):  # type: ignore[union-attr]
        ssq = ssq + ssq[lane ^ mask]
    if op.get("cross_warp") == "smem":
        partial = ssq[0::WARP]  # lane 0 of every warp writes its warp's sum
        total = partial[0]
        for w in range(1, hl // WARP):
            total = total + partial[w]
        ssq = np.full(hl, total, F32)
    eps = F32(lanes.mem.scalars["rms_norm_eps"])
    rrms = F32(1.0) / np.sqrt(ssq / F32(int(op.attr("head"))) + eps)  # type: ignore[arg-type]
    weight = lanes.mem["rms_norm_weight"][lanes.span(lanes.col)].astype(F32)
    lanes.y = (x * rrms[:, None]) * weight


def rope(lanes: Lanes, op: Op) -> None:
    """GPT-J pairs of the lanes whose channels start at or after `first`, in fp32."""
    dims, first, ratio = (int(op.attr(k)) for k in ("dims", "first", "ratio"))  # type: ignore[arg-type]
    sel = lanes.col >= first
    cs_row = (lanes.pos // ratio) * ratio * dims + (lanes.col[sel] - first) // 2
    j = np.arange(lanes.elems // 2)
    cs = lanes.mem["cos_sin_cache"]
    cos, sin = cs[cs_row[:, None] + j], cs[cs_row[:, None] + dims // 2 + j]
    y = lanes.y.copy()  # type: ignore[union-attr]
    a, b = y[sel, 0::2], y[sel, 1::2]
    y[np.ix_(sel, 2 * j)] = a * cos - b * sin
    y[np.ix_(sel, 2 * j + 1)] = a * sin + b * cos
    lanes.y = y


# -- cc.hadamard, cc.quant, cc.store --------------------------------------------------
def hadamard(lanes: Lanes, op: Op) -> None:
    """bf16 round, the butterfly over the head (spans size/2 .. 1: across lanes by the
    lane_masks shuffles, then inside each lane), then the fp32 1/sqrt(size) scale."""
    q, lane, E = np_bf16_rne(lanes.y), np.arange(lanes.head_lanes), lanes.elems
    for mask in op.get("lane_masks"):  # type: ignore[union-attr]
        upper = ((lane // mask) % 2 == 1)[:, None]
        other = q[lane ^ mask]
        q = np.where(upper, other - q, q + other).astype(F32)
    span = E // 2
    while span:
        for g in range(0, E, 2 * span):
            a, b = q[:, g:g + span].copy(), q[:, g + span:g + 2 * span].copy()
            q[:, g:g + span], q[:, g + span:g + 2 * span] = a + b, a - b
        span //= 2
    lanes.q = q * F32(op.attr("scale"))  # type: ignore[arg-type]


def quant(lanes: Lanes, op: Op) -> None:
    """bf16 round (unless rotated), then a block's amax through group_tree (and smem across
    warps) to its UE8M0 byte and 2^(127-e8), or the per-tensor RN(1 / scale[0])."""
    q = np_bf16_rne(lanes.y) if op.attr("bf16_first") else lanes.q
    lanes.q = q
    if op.attr("scale") == "tensor":
        scale = lanes.mem[op.operands[1]][0]
        lanes.inv = np.full(lanes.head_lanes, F32(1.0) / F32(scale), F32)
        return
    amax = np.zeros(lanes.head_lanes, F32)
    for e in range(lanes.elems):
        amax = np.fmax(amax, np.abs(q[:, e]))
    lane = np.arange(lanes.head_lanes)
    for mask in op.get("group_tree"):  # type: ignore[union-attr]
        amax = np.fmax(amax, amax[lane ^ mask])
    if op.get("cross_warp") == "smem":
        # lane 0 of every warp leaves its warp's max; each lane takes its block's warps' max
        warps = int(op.get("lanes_per_group")) // WARP  # type: ignore[arg-type]
        partial = amax[0::WARP].reshape(-1, warps).max(axis=1)
        amax = np.repeat(partial, warps * WARP).astype(F32)
    floor, qmax = F32(op.attr("scale_floor")), F32(op.attr("qmax"))  # type: ignore[arg-type]
    quotient = (lambda v: v / qmax) if op.attr("divide") else (lambda v: v * F32(1.0 / float(qmax)))
    with np.errstate(under="ignore"):
        on_scale = op.attr("floor_on") == "scale"
        raw = np.fmax(floor, quotient(amax)) if on_scale else quotient(np.fmax(amax, floor))
    e8 = ((raw.astype(F32).view(np.uint32).astype(np.int64) + 0x7FFFFF) >> 23) & 0xFF
    lanes.inv = (((254 - e8) << 23) & 0xFFFFFFFF).astype(np.uint32).view(F32)
    lanes.e8 = e8


def store(lanes: Lanes, op: Op) -> None:
    """One region's codes, scales and pad bytes at the addresses the emitted store computes."""
    mem, kv_slot, E = lanes.mem, lanes.kv_slot, lanes.elems
    shift = mem.scalar("kv_block_shift")
    runtime = op.attr("rows") == "runtime"
    stride = mem.scalar("k_cache_token_stride") if runtime else int(op.attr("token_stride"))  # type: ignore[arg-type]
    page_base = (kv_slot >> shift) * mem.scalar("k_cache_page_stride")
    kv_off = kv_slot & ((1 << shift) - 1)
    token = page_base + kv_off * stride
    lo, hi = op.attr("channels")  # type: ignore[misc]
    mine, codec = (lanes.col >= lo) & (lanes.col < hi), op.attr("codec")
    col, cache, offset = lanes.col[mine], mem["k_cache"], int(op.attr("offset"))  # type: ignore[arg-type]
    if codec == "bf16":
        bits = np_bf16_rne(lanes.y[mine]).view(np.uint32) >> 16
        cache[(token + offset + 2 * (col - lo))[:, None] + np.arange(2 * E)] = _bytes(bits, "<u2")
        return
    scaled = lanes.q[mine] * lanes.inv[mine][:, None]
    if codec == "e2m1":
        nib = np_e2m1_encode(scaled)
        packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
        cache[(token + offset + (col - lo) // 2)[:, None] + np.arange(E // 2)] = packed
    else:
        cache[(token + offset + (col - lo))[:, None] + np.arange(E)] = np_e4m3_encode(scaled)
    quant_op = next(q for q in lanes.module.iter("cc.quant") if q.result == op.operands[0])
    if quant_op.attr("stored") != "none":
        scales = page_base + (1 << shift) * stride + kv_off * int(op.attr("scale_dim"))  # type: ignore[arg-type]
        _store_scales(lanes, op, quant_op, scales, mine)


def _store_scales(lanes: Lanes, op: Op, quant_op: Op, scales: int, mine: np.ndarray) -> None:
    lo, hi = op.attr("channels")  # type: ignore[misc]
    block, group = int(quant_op.attr("block")), int(quant_op.get("lanes_per_group"))  # type: ignore
    first, cache = int(op.attr("scale_offset")), lanes.mem["k_cache"]  # type: ignore[arg-type]
    leader = mine & (np.arange(lanes.head_lanes) % group == 0)
    index = (lanes.col[leader] - lo) // block
    if quant_op.attr("stored") == "f32":
        cache[(scales + first + 4 * index)[:, None] + np.arange(4)] = _bytes(lanes.e8[leader] << 23, "<u4")
        end = first + 4 * (hi - lo) // block
    else:
        cache[scales + first + index] = lanes.e8[leader]
        end = first + (hi - lo) // block
    cache[scales + np.arange(end, end + int(op.attr("pad")))] = 0  # type: ignore[arg-type]


def _bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    """Little-endian bytes of integer values, one row per lane: [lanes, itemsize * E]."""
    return np.ascontiguousarray(values.astype(dtype)).view(np.uint8).reshape(len(values), -1)


# a window's row loads by the op that defines its state operand (a kernel argument: paged)
ROW_LOADS = {"cc.ring_state": interp_ring.load_row}

STAGES: dict[str, Callable[[Lanes, Op], None]] = {
    "cc.ring_state": interp_ring.ring_state,
    "cc.window": window,
    "cc.pool_softmax": pool,
    "cc.store_rows": store_rows,
    "cc.load_rows": load_rows,
    "cc.rms_norm": rms_norm,
    "cc.rope": rope,
    "cc.hadamard": hadamard,
    "cc.quant": quant,
    "cc.store": store,
}
