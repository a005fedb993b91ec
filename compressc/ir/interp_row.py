"""The interpreter of the row body's lane-level `kd.*` ops (compressc/ir/kd_row.py).

Each op runs over the CTA's lanes at once: a register is a NumPy array with one row per
lane of split group 0 (`[head_lanes]` or `[head_lanes, E]`), a shuffle `shfl_xor(v, m)`
reads `v[lane ^ m]`, each CTA's static shared memory is an fp32 array that starts as NaN
(so a read of a slot nobody wrote poisons the result), and a store writes the bytes of a
lane's words at the addresses its attributes give. A wrong mask, slot or byte offset in
a `.cir` therefore gives wrong bytes here, as it would on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compressc.ir.core import Op
from compressc.ir.interp_ring import RING_RUN
from compressc.ir.interp_stages import F32, Lanes
from compressc.ir.interp_window import WINDOW_LOOPS, WINDOW_RUN
from compressc.ir.kd_row import OPERAND_LOADS, RowNode, row_program
from compressc.ir.row_pool import POOL_RUN
from compressc.ir.row_split import SPLIT_BRANCHES, SPLIT_RUN
from compressc.ir.row_stores import STORE_RUN
from compressc.numerics import np_bf16_rne
from compressc.specs.target import WARP

# the emitter's register names that the coarse row ops (window, pool, loads) share
_FIELDS = {"rX": "x", "rY": "y", "rQ": "q", "e8": "e8", "inv": "inv"}


class LaneError(RuntimeError):
    """The row body did something the emitted kernel must never do (an smem read before the
    barrier that publishes it, a shuffle outside the warp)."""


def get(lanes: Lanes, name: str) -> np.ndarray:
    return getattr(lanes, _FIELDS[name]) if name in _FIELDS else lanes.regs[name]


def put(lanes: Lanes, name: str, value: np.ndarray) -> None:
    if name in _FIELDS:
        setattr(lanes, _FIELDS[name], value)
    else:
        lanes.regs[name] = value


def run_row_ops(lanes: Lanes) -> None:
    """One active row: the operand loads placed early, then every row op in order."""
    words = max(1, lanes.module.get("smem_bytes", 0) // 4)  # type: ignore[operator]
    lanes.smem = np.full((lanes.cluster, words), np.nan, F32)  # one row per CTA of the cluster
    lanes.live = np.ones(lanes.head_lanes, dtype=bool)
    for op in lanes.module.ops:
        if op.name in OPERAND_LOADS and op.attr("at") == "early":
            ROW_RUN[op.name](lanes, op)
    _walk(lanes, row_program(lanes.module.ops))


def _walk(lanes: Lanes, nodes: tuple[RowNode, ...]) -> None:
    for node in nodes:
        op = node.op
        if op.name == "kd.if_cols":
            outer, col = lanes.live, lanes.col
            lanes.live = outer & (col >= int(op.attr("lo"))) & (col < int(op.attr("hi")))  # type: ignore[arg-type]
            _walk(lanes, node.body)
            lanes.live = outer
        elif op.name in ROW_BODIES:
            ROW_BODIES[op.name](lanes, op, lambda body=node.body: _walk(lanes, body))
        elif op.name in ROW_RUN and op.attr("at") != "early":
            ROW_RUN[op.name](lanes, op)


def _lane(lanes: Lanes) -> np.ndarray:
    return np.arange(lanes.head_lanes)


def _xor(lanes: Lanes, op: Op, mask: int) -> np.ndarray:
    """The lane each lane reads in shfl.sync.bfly: lane ^ mask, within its warp."""
    if not 0 < mask < WARP:
        raise LaneError(f"{op.name}: shfl_xor mask {mask} leaves the 32-lane warp")
    return _lane(lanes) ^ mask


def _sum_squares(lanes: Lanes, op: Op) -> None:
    x, ssq = get(lanes, "rX"), np.zeros(lanes.head_lanes, F32)
    for e in range(int(op.attr("elems"))):  # type: ignore[arg-type]
        ssq = ssq + x[:, e] * x[:, e]
    put(lanes, "ssq", ssq)


def _lane_tree(combine: Callable) -> Callable[[Lanes, Op], None]:
    def run(lanes: Lanes, op: Op) -> None:
        name = str(op.attr("value"))
        for mask in op.attr("masks"):  # type: ignore[union-attr]
            v = get(lanes, name)
            put(lanes, name, combine(v, v[_xor(lanes, op, int(mask))]).astype(F32))

    return run


def _smem_put(lanes: Lanes, op: Op) -> None:
    """Lane 0 of every warp writes its value to slot + warp."""
    v, slot = get(lanes, str(op.attr("value"))), int(op.attr("slot"))  # type: ignore[arg-type]
    _in_smem(lanes, op, slot + lanes.head_lanes // WARP - 1)
    for w in range(lanes.head_lanes // WARP):
        lanes.smem[0, slot + w] = v[w * WARP]  # type: ignore[index]
    lanes.unpublished = True


def _barrier(lanes: Lanes, op: Op) -> None:
    lanes.unpublished = False


def _read_slots(lanes: Lanes, op: Op, first: np.ndarray, warps: int) -> list[np.ndarray]:
    if lanes.unpublished:
        raise LaneError(f"{op.name}: reads smem slot {op.attr('slot')} before a barrier publishes it")
    _in_smem(lanes, op, int(np.max(first)) + warps - 1)
    return [lanes.smem[0, first + w] for w in range(warps)]  # type: ignore[index]


def _in_smem(lanes: Lanes, op: Op, last: int) -> None:
    if last >= lanes.smem.shape[1]:  # type: ignore[union-attr]
        raise LaneError(f"{op.name}: slot {op.attr('slot')} reaches fp32 word {last}, past the CTA's "
                        f"{lanes.module.get('smem_bytes')} bytes of static smem")


def _smem_sum(lanes: Lanes, op: Op) -> None:
    """Every lane sums the warps' partials slot .. slot + warps - 1 in order."""
    slot = np.full(lanes.head_lanes, int(op.attr("slot")))  # type: ignore[arg-type]
    parts = _read_slots(lanes, op, slot, int(op.attr("warps")))  # type: ignore[arg-type]
    total = parts[0]
    for p in parts[1:]:
        total = (total + p).astype(F32)
    put(lanes, str(op.attr("value")), total.astype(F32))


def _smem_max(lanes: Lanes, op: Op) -> None:
    """Each lane takes the max of its block's warps' slots, g0 = slot + (warp // W) * W."""
    warps = int(op.attr("warps"))  # type: ignore[arg-type]
    g0 = int(op.attr("slot")) + (_lane(lanes) // WARP // warps) * warps  # type: ignore[arg-type]
    parts = _read_slots(lanes, op, g0, warps)
    v = parts[0]
    for p in parts[1:]:
        v = np.fmax(v, p)
    put(lanes, str(op.attr("value")), v.astype(F32))


def _rsqrt_mean(lanes: Lanes, op: Op) -> None:
    eps = F32(lanes.mem.scalars["rms_norm_eps"])
    put(lanes, "rrms", F32(1.0) / np.sqrt(get(lanes, "ssq") / F32(int(op.attr("count"))) + eps))  # type: ignore[arg-type]


def _load_rms_weight(lanes: Lanes, op: Op) -> None:
    put(lanes, "rW", lanes.mem["rms_norm_weight"][lanes.span(lanes.col)].astype(F32))


def _rms_scale(lanes: Lanes, op: Op) -> None:
    put(lanes, "rY", (get(lanes, "rX") * get(lanes, "rrms")[:, None]) * get(lanes, "rW"))


def _load_rope_tables(lanes: Lanes, op: Op) -> None:
    """cos and sin of the lanes from `first` on (the others' stay NaN: never read)."""
    dims, first, ratio = (int(op.attr(k)) for k in ("dims", "first", "ratio"))  # type: ignore[arg-type]
    half, sel = lanes.elems // 2, lanes.col >= first
    cs_row = (lanes.pos // ratio) * ratio * dims + (lanes.col[sel] - first) // 2
    cs, j = lanes.mem["cos_sin_cache"], np.arange(half)
    cos, sin = np.full((lanes.head_lanes, half), np.nan, F32), np.full((lanes.head_lanes, half), np.nan, F32)
    cos[sel], sin[sel] = cs[cs_row[:, None] + j], cs[cs_row[:, None] + dims // 2 + j]
    put(lanes, "rCos", cos)
    put(lanes, "rSin", sin)


def _rope_rotate(lanes: Lanes, op: Op) -> None:
    sel = lanes.col >= int(op.attr("first"))  # type: ignore[arg-type]
    y, cos, sin = get(lanes, "rY").copy(), get(lanes, "rCos")[sel], get(lanes, "rSin")[sel]
    a, b = y[sel, 0::2], y[sel, 1::2]
    j = np.arange(lanes.elems // 2)
    y[np.ix_(sel, 2 * j)] = a * cos - b * sin
    y[np.ix_(sel, 2 * j + 1)] = a * sin + b * cos
    put(lanes, "rY", y)


def _bf16_round(lanes: Lanes, op: Op) -> None:
    put(lanes, "rQ", np_bf16_rne(get(lanes, "rY")))


def _shfl_butterfly(lanes: Lanes, op: Op) -> None:
    """rQ = rQ * sgn + shfl_xor(rQ, mask): the lower lane keeps a + b, the upper b - a."""
    mask, q = int(op.attr("mask")), get(lanes, "rQ")  # type: ignore[arg-type]
    sgn = (F32(1) - F32(2) * ((_lane(lanes) // mask) % 2)).astype(F32)[:, None]
    put(lanes, "rQ", (q * sgn + q[_xor(lanes, op, mask)]).astype(F32))


def _lane_butterfly(lanes: Lanes, op: Op) -> None:
    q, span = get(lanes, "rQ").copy(), lanes.elems // 2
    while span:
        for g in range(0, lanes.elems, 2 * span):
            a, b = q[:, g:g + span].copy(), q[:, g + span:g + 2 * span].copy()
            q[:, g:g + span], q[:, g + span:g + 2 * span] = a + b, a - b
        span //= 2
    put(lanes, "rQ", q)


def _scale(lanes: Lanes, op: Op) -> None:
    put(lanes, "rQ", get(lanes, "rQ") * F32(op.attr("factor")))  # type: ignore[arg-type]


def _quant_prep(lanes: Lanes, op: Op) -> None:
    if op.attr("bf16_first"):
        put(lanes, "rQ", np_bf16_rne(get(lanes, "rY")))
    if op.attr("amax"):
        q, amax = get(lanes, "rQ"), np.zeros(lanes.head_lanes, F32)
        for e in range(lanes.elems):
            amax = np.fmax(amax, np.abs(q[:, e]))
        put(lanes, "amax", amax)


def _ue8m0_scale(lanes: Lanes, op: Op) -> None:
    """raw = max(floor, amax / qmax) (or the floor on amax first), rounded up to a power of
    two: its exponent byte e8 and inv = 2^(127 - e8) exactly."""
    floor, by, amax = F32(op.attr("floor")), F32(op.attr("by")), get(lanes, "amax")  # type: ignore[arg-type]
    quotient = (lambda v: v / by) if op.attr("divide") else (lambda v: v * by)
    with np.errstate(under="ignore"):
        on_scale = op.attr("floor_on") == "scale"
        raw = np.fmax(floor, quotient(amax)) if on_scale else quotient(np.fmax(amax, floor))
    e8 = ((raw.astype(F32).view(np.uint32).astype(np.int64) + 0x7FFFFF) >> 23) & 0xFF
    put(lanes, "inv", (((254 - e8) << 23) & 0xFFFFFFFF).astype(np.uint32).view(F32))
    put(lanes, "e8", e8)


def _tensor_scale(lanes: Lanes, op: Op) -> None:
    scale = lanes.mem[str(op.attr("scalar"))][0]
    put(lanes, "inv", np.full(lanes.head_lanes, F32(1.0) / F32(scale), F32))


ROW_RUN: dict[str, Callable[[Lanes, Op], None]] = {
    "kd.sum_squares": _sum_squares,
    "kd.lane_sum": _lane_tree(lambda v, o: v + o),
    "kd.lane_max": _lane_tree(np.fmax),
    "kd.smem_put": _smem_put,
    "kd.cta_barrier": _barrier,
    "kd.named_barrier": _barrier,
    "kd.smem_sum": _smem_sum,
    "kd.smem_max": _smem_max,
    "kd.rsqrt_mean": _rsqrt_mean,
    "kd.load_rms_weight": _load_rms_weight,
    "kd.rms_scale": _rms_scale,
    "kd.load_rope_tables": _load_rope_tables,
    "kd.rope_rotate": _rope_rotate,
    "kd.bf16_round": _bf16_round,
    "kd.shfl_butterfly": _shfl_butterfly,
    "kd.lane_butterfly": _lane_butterfly,
    "kd.scale": _scale,
    "kd.quant_prep": _quant_prep,
    "kd.ue8m0_scale": _ue8m0_scale,
    "kd.tensor_scale": _tensor_scale,
    **STORE_RUN,
    **POOL_RUN,
    **WINDOW_RUN,
    **SPLIT_RUN,
    **RING_RUN,
}
# the row ops that open a body: (lanes, op, walk the body once)
ROW_BODIES = {**WINDOW_LOOPS, **SPLIT_BRANCHES}
