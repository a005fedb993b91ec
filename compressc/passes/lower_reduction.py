"""lower-reduction: turn each reduction into warp shuffles plus CTA exchanges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.passes.base import ModulePass, require_thread_map
from compressc.specs.target import WARP


def butterfly(lanes: int, order: str = "down") -> tuple[int, ...]:
    """XOR masks that reduce `lanes` consecutive, aligned lanes: log2(lanes) steps.

    A mask below `lanes` never leaves an aligned group of `lanes` lanes, so the
    shuffle tree is confined to the group without a member mask.
    """
    masks = tuple(1 << k for k in range(lanes.bit_length() - 1))
    return tuple(reversed(masks)) if order == "down" else masks


def hadamard_masks(op: Op, elems: int) -> tuple[int, ...]:
    """Shuffle masks of the Hadamard butterfly's spans size/2, ..., elems (a span S pairs
    channel c with c ^ S: lane l with lane l ^ (S / elems)); smaller spans stay in a lane."""
    size = int(op.attr("size"))  # type: ignore[arg-type]
    return tuple(span // elems for span in (size >> k for k in range(1, size.bit_length())) if span >= elems)


@dataclass(frozen=True, slots=True)
class LowerReduction(ModulePass):
    """Choose the shuffle trees and cross-warp exchanges of every reduction.

    Expects: thread-map has run (module `warps`, `window_split`; cc.quant `lanes_per_group`).
    Leaves:  cc.rms_norm `lane_tree` (warp butterfly of the sum of squares) and
             `cross_warp` ("smem" + one barrier when the head spans several warps,
             else "none"); cc.quant `group_tree` (amax butterfly masked to the
             quant group, or the whole warp) and `cross_warp` ("smem" + one barrier when
             a quant block spans several warps, as the indexer's one block of a head
             wider than 32 lanes does; else "none"; a per-tensor scale reduces nothing:
             an empty tree); cc.hadamard `lane_masks` (the butterfly's spans of a lane or
             more, as shuffle masks, widest first); cc.pool_softmax `merge` ("smem" when
             the window is split across lane groups or the CTAs of a cluster, else "none").
    Options: order ("down": masks 16, 8, ..., 1; "up": 1, 2, ..., 16). Both are
             legal; the sum's rounding may differ by an ulp, never the bytes rule.
    """

    name: ClassVar[str] = "lower-reduction"
    order: str = "down"

    def __post_init__(self) -> None:
        if self.order not in ("down", "up"):
            raise ValueError(f"order={self.order!r}: must be 'down' or 'up'")

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        head_lanes = int(module.get("head_lanes", 0))  # type: ignore[arg-type]
        head_warps = max(1, head_lanes // WARP)
        split = int(module.get("window_split", 1)) * int(module.get("cluster_split", 1))  # type: ignore[arg-type]
        lane_tree = butterfly(min(WARP, head_lanes), self.order)
        cross = "smem" if head_warps > 1 else "none"
        module = module.replace_ops(
            "cc.rms_norm", lambda op: op.with_sched(lane_tree=lane_tree, cross_warp=cross))
        module = module.replace_ops("cc.quant", self._quant)
        elems = int(module.get("elems_per_lane", 1))  # type: ignore[arg-type]
        module = module.replace_ops(
            "cc.hadamard", lambda op: op.with_sched(lane_masks=hadamard_masks(op, elems)))
        merge = "smem" if split > 1 else "none"
        return module.replace_ops("cc.pool_softmax", lambda op: op.with_sched(merge=merge))

    def _quant(self, op: Op) -> Op:
        if op.attr("scale") == "tensor":
            return op.with_sched(group_tree=(), cross_warp="none")
        lanes = int(op.get("lanes_per_group", 1))  # type: ignore[arg-type]
        cross = "smem" if lanes > WARP else "none"
        return op.with_sched(group_tree=butterfly(min(WARP, lanes), self.order), cross_warp=cross)
