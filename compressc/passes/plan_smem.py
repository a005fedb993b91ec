"""plan-smem: give every cross-lane exchange a shared-memory slot."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.passes.base import ModulePass, require_thread_map
from compressc.specs.target import DEFAULT_TARGET, WARP

FP32 = 4
SMEM_LIMIT = DEFAULT_TARGET.static_smem  # without the opt-in attribute


def merge_slots(module: Module) -> int:
    """Partials (max, sum, weighted sum per channel) the pool's smem region holds at once:
    the CTA's split groups 1..K-1 (slot g), or, after the cluster barrier, ranks 1..S-1's
    partials that they store into rank 0's region (slot rank - 1). A global split (c128a_split)
    exchanges its CTAs' partials in global memory: its region holds the split groups', then
    (after the CTA's own merge) the last CTA's merged (sum, weighted sum) and the election
    word: 2 x head + 1 words, which one slot's 3 x head words already hold."""
    split = int(module.get("window_split", 1))  # type: ignore[arg-type]
    cluster = int(module.get("cluster_split", 1))  # type: ignore[arg-type]
    if module.get("split_merge") == "global":
        return split
    return max(split, cluster - 1)


@dataclass(frozen=True, slots=True)
class PlanSmem(ModulePass):
    """Lay out the static shared memory the reductions need, 16-byte aligned.

    Expects: lower-reduction has run (`cross_warp`, `merge`).
    Leaves:  cc.rms_norm and cc.quant `smem_offset` (one fp32 partial per warp) when
             they exchange across warps; cc.pool_softmax `smem_offset` (max, sum and
             weighted sum per channel and split group, or per cluster rank
             1..S-1: see merge_slots) when it merges; module
             `smem_bytes` (the total) and `barriers` (CTA barriers executed).
    Options: none.
    """

    name: ClassVar[str] = "plan-smem"

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        offset, barriers, ops = 0, 0, []
        for op in module.ops:
            size = self._size(module, op)
            if size:
                ops.append(op.with_sched(smem_offset=offset))
                offset += -(-size // 16) * 16
                barriers += 1
            else:
                ops.append(op)
        return replace(module, ops=tuple(ops)).with_sched(smem_bytes=offset, barriers=barriers)

    @staticmethod
    def _size(module: Module, op: Op) -> int:
        if op.name in ("cc.rms_norm", "cc.quant") and op.get("cross_warp") == "smem":
            return FP32 * int(module.get("head_lanes", 0)) // WARP  # type: ignore[arg-type]
        if op.name == "cc.pool_softmax" and op.get("merge") == "smem":
            return 3 * FP32 * merge_slots(module) * int(op.attr("head"))  # type: ignore[arg-type]
        return 0
