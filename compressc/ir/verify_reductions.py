"""The verifier's rules for the reductions a lowered module runs: the RMS sum's lane tree,
the quant block's amax tree and scale, and the Hadamard butterfly's lane masks."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.specs.target import WARP


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _masks(lanes: int) -> list[int]:
    return [1 << k for k in range(lanes.bit_length() - 1)]


def _fail(module: Module, op: Op | None, field: str, value: object, rule: str):
    from compressc.ir.verifier import _fail as fail

    return fail(module, op, field, value, rule)


def verify_rms(module: Module, op: Op) -> None:
    head_lanes = int(module.get("head_lanes"))  # type: ignore[arg-type]
    lanes = min(WARP, head_lanes)
    tree = op.get("lane_tree")
    if tree is not None and sorted(tree) != _masks(lanes):  # type: ignore[arg-type]
        raise _fail(module, op, "lane_tree", tree, f"must XOR exactly the masks 1..{lanes // 2} of a warp")
    want = "smem" if head_lanes > WARP else "none"
    if op.get("cross_warp") not in (None, want):
        raise _fail(module, op, "cross_warp", op.get("cross_warp"),
                    f"must be {want!r}: one head spans {head_lanes // lanes} warp(s)")


def verify_hadamard(module: Module, op: Op, elems: int) -> None:
    from compressc.passes.lower_reduction import hadamard_masks

    head_lanes = int(module.get("head_lanes", 0))  # type: ignore[arg-type]
    if head_lanes > WARP:
        raise _fail(module, op, "size", op.attr("size"),
                    f"the butterfly shuffles within one warp: the head's {head_lanes} lanes must be "
                    "at most 32 "
                    "(pick more elems-per-lane)")
    masks, want = op.get("lane_masks"), hadamard_masks(op, elems)
    if masks is not None and tuple(masks) != want:  # type: ignore[arg-type]
        raise _fail(module, op, "lane_masks", masks,
                    f"must be {want}: spans size/2 .. elems_per_lane={elems} as lane masks, widest first")


def verify_quant(module: Module, op: Op, elems: int) -> None:
    block = int(op.attr("block"))  # type: ignore[arg-type]
    convert = op.get("convert")
    if convert not in (None, "sw", "hw") or (convert is not None and op.attr("codec") != "e2m1"):
        raise _fail(module, op, "convert", convert, "must be 'sw' or 'hw', and only on an e2m1 quantisation")
    if op.attr("scale") == "tensor":
        if op.get("group_tree") not in (None, ()) or op.get("cross_warp") not in (None, "none"):
            raise _fail(module, op, "group_tree", op.get("group_tree"),
                        "must be empty with cross_warp 'none': a per-tensor scale reduces nothing")
        return
    lanes = op.get("lanes_per_group")
    if lanes is None:
        return
    lanes = int(lanes)  # type: ignore[arg-type]
    in_warp = _pow2(lanes) and lanes <= WARP
    if block % elems or lanes * elems != block or not (in_warp or lanes % WARP == 0):
        raise _fail(module, op, "lanes_per_group", lanes,
                    f"must be quant_block / elems_per_lane = {block}/{elems}, a power of two <= 32 "
                    "or a whole number of warps")
    tree, tree_lanes = op.get("group_tree"), min(WARP, lanes)
    if tree is not None and sorted(tree) != _masks(tree_lanes):  # type: ignore[arg-type]
        raise _fail(module, op, "group_tree", tree,
                    f"must XOR exactly the masks 1..{tree_lanes // 2} of the group")
    want = "smem" if lanes > WARP else "none"
    if op.get("cross_warp") not in (None, want):
        raise _fail(module, op, "cross_warp", op.get("cross_warp"),
                    f"must be {want!r}: one quant block spans {max(1, lanes // WARP)} warp(s)")
