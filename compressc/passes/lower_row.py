"""lower-row: lower the row body's epilogue ops to the kernel dialect's lane-level ops.

`cc.rms_norm`, `cc.rope`, `cc.hadamard`, `cc.quant` and `cc.store` keep their spec and
schedule fields (what the row computes); after each this pass writes the `kd.*` ops that
say how the CTA's lanes compute it (compressc/ir/kd_row.py): loops over a lane's channels,
the xor-shuffle trees with their masks, a cross-warp exchange as its smem slots, barrier
and reduction, code words and the byte offsets of their stores. Every fact the emitter
prints is an attribute here, so the emitter decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from compressc.ir.core import Module, Op, fields
from compressc.ir.kd_row import LOWERED, is_row_op
from compressc.ir.schedule import Schedule
from compressc.passes import lower_row_online as online
from compressc.passes.base import ModulePass
from compressc.passes.lower_row_pool import pool_ops
from compressc.passes.lower_row_store import load_rows_ops, store_ops, store_rows_ops
from compressc.passes.lower_row_window import ring_ops, window_ops
from compressc.specs.target import WARP


def kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def _i(op: Op, key: str) -> int:
    return int(op.get(key))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class LowerRow(ModulePass):
    """Write each epilogue row op's lane-level `kd.*` ops right after it.

    Expects: a fully scheduled module (it has no options; lower-grid runs it first, so a
             pipeline need not name it, and the canonical pipeline string leaves it out).
    Leaves:  the `kd.*` row ops after each row op that `kd_row.LOWERED` names (the window, the
             ring state, the epilogue from cc.rms_norm to cc.store, C128A's row loads and
             stores, the online merge and store); nothing else changes.
             A module that has them already is left as it is.
    """

    name: ClassVar[str] = "lower-row"

    def apply(self, module: Module) -> Module:
        if any(is_row_op(op) for op in module.ops):
            return module
        require_scheduled(module, self.name)
        ops: list[Op] = []
        for op in module.ops:
            ops.append(op)
            if op.name in LOWERED:
                ops += _LOWER[op.name](module, op)
        return replace(module, ops=tuple(ops))


def require_scheduled(module: Module, name: str) -> None:
    """The row body and its loop depend on the whole schedule: lowered before it is complete,
    they would keep a stale one (a missing smem handover, the wrong staging)."""
    window = module.find("cc.window") or module.find("cc.online_merge")
    missing = [key for key in ("elems_per_lane", "smem_bytes") if module.get(key) is None]
    if window is not None and window.get("rows_in_flight") is None:
        missing.append("rows_in_flight (rows-in-flight)")
    if any(op.attr("codec") == "e2m1" and op.get("convert") is None for op in module.iter("cc.quant")):
        missing.append("the e2m1 convert (quant-convert)")
    if missing:
        raise ValueError(f"{name} needs the whole schedule, and {', '.join(missing)} is unset: "
                         "it runs last (every pipeline ends with it; do not name it earlier)")


def _barrier(module: Module) -> Op:
    """bar.sync 0 counts every thread of the CTA: after a split merge only group 0 runs
    (inside `if group == 0`), so it takes a named barrier of group 0's warps instead."""
    sched = Schedule.of(module)
    return kd("cta_barrier") if sched.split == 1 else kd("named_barrier", id=1, threads=sched.head_lanes)


def _rms(module: Module, op: Op) -> list[Op]:
    sched = Schedule.of(module)
    ops = [kd("sum_squares", elems=sched.elems), kd("lane_sum", value="ssq", masks=op.get("lane_tree"))]
    if op.get("cross_warp") == "smem":
        slot, warps = _i(op, "smem_offset") // 4, sched.head_lanes // WARP
        ops += [kd("smem_put", value="ssq", slot=slot, warps=warps, span="head"), _barrier(module),
                kd("smem_sum", value="ssq", slot=slot, warps=warps)]
    ops.append(kd("rsqrt_mean", count=int(op.attr("head"))))  # type: ignore[arg-type]
    bf16 = op.attr("weight_dtype") == "bf16"
    ops.append(kd("load_rms_weight", elems=sched.elems, dtype=str(op.attr("weight_dtype")),
                  divby=_i(op, "vector_bits") // (16 if bf16 else 32), at=str(op.get("load"))))
    return ops + [kd("rms_scale", elems=sched.elems)]


def _rope(module: Module, op: Op) -> list[Op]:
    elems, first = Schedule.of(module).elems, int(op.attr("first"))  # type: ignore[arg-type]
    tables = kd("load_rope_tables", elems=elems, dims=int(op.attr("dims")), first=first,  # type: ignore[arg-type]
                ratio=int(op.attr("ratio")), divby=_i(op, "vector_bits") // 32, at=str(op.get("load")))  # type: ignore[arg-type]
    return [tables, kd("rope_rotate", elems=elems, first=first)]


def _hadamard(module: Module, op: Op) -> list[Op]:
    elems = Schedule.of(module).elems
    ops = [kd("bf16_round", elems=elems)]
    ops += [kd("shfl_butterfly", mask=m, span=m * elems, elems=elems) for m in op.get("lane_masks")]  # type: ignore[union-attr]
    return ops + [kd("lane_butterfly", elems=elems), kd("scale", elems=elems, factor=float(op.attr("scale")))]  # type: ignore[arg-type]


def _quant(module: Module, op: Op) -> list[Op]:
    elems, block = Schedule.of(module).elems, op.attr("scale") == "block"
    ops = []
    if op.attr("bf16_first") or block:
        ops.append(kd("quant_prep", elems=elems, bf16_first=bool(op.attr("bf16_first")), amax=block))
    if not block:
        return ops + [kd("tensor_scale", scalar=op.operands[1])]
    lanes = _i(op, "lanes_per_group")
    ops.append(kd("lane_max", value="amax", masks=op.get("group_tree"), lanes=lanes))
    if op.get("cross_warp") == "smem":
        slot, warps = _i(op, "smem_offset") // 4, lanes // WARP
        ops += [kd("smem_put", value="amax", slot=slot, warps=warps, span="block"), _barrier(module),
                kd("smem_max", value="amax", slot=slot, warps=warps)]
    qmax = float(op.attr("qmax"))  # type: ignore[arg-type]
    # with divide = false the kernel multiplies by 1/qmax rounded to fp32 once, here
    factor = qmax if op.attr("divide") else float(np.float32(1.0 / qmax))
    return ops + [kd("ue8m0_scale", floor=float(op.attr("scale_floor")), by=factor,  # type: ignore[arg-type]
                     divide=bool(op.attr("divide")), floor_on=str(op.attr("floor_on")))]


_LOWER = {"cc.ring_state": ring_ops, "cc.window": window_ops, "cc.pool_softmax": pool_ops,
          "cc.rms_norm": _rms, "cc.rope": _rope, "cc.hadamard": _hadamard, "cc.quant": _quant,
          "cc.store": store_ops, "cc.store_rows": store_rows_ops, "cc.load_rows": load_rows_ops,
          "cc.online_merge": online.merge_ops, "cc.online_store": online.store_ops}
