"""The kernel dialect's row body: lane-level `kd.*` ops that lower-row writes after the row
ops they implement (docs/pipeline.md §8).

A coarse row op (`cc.rms_norm` .. `cc.store`) stays in the module as the spec of what the
row computes (its attributes, the schedule the passes filled); the `kd.*` ops after it say
how a CTA's lanes compute it: per-lane loops, xor-shuffle trees with their masks, the
shared-memory slots and barriers of a cross-warp exchange, code words and the byte
offsets of their stores. The emitter prints one small function per op and the
interpreter executes them over the CTA's lanes. `kd.if_cols` .. `kd.end_cols` nests the
ops of a store region (the lanes owning channels lo .. hi - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from compressc.ir.core import Op

# op -> the attributes it must carry
ROW_ATTRS: dict[str, tuple[str, ...]] = {
    # cc.pool_softmax: the split groups' and the cluster's partials merged through smem
    "kd.put_partials": ("slot", "stride", "head", "elems"),
    "kd.fold_groups": ("slot", "stride", "head", "elems", "groups"),
    "kd.cluster_barrier": ("after", "ranks"),
    "kd.dsmem_put_partials": ("slot", "stride", "head", "elems", "group0"),
    "kd.fold_ranks": ("slot", "stride", "head", "elems", "ranks", "absent", "group0"),
    "kd.pooled": ("elems",),
    "kd.only_group0": (),
    "kd.only_rank0": (),
    "kd.global_merge": ("head", "slot", "ctas"),
    "kd.only_last": (),
    # cc.rms_norm
    "kd.sum_squares": ("elems",),
    "kd.lane_sum": ("value", "masks"),
    "kd.smem_put": ("value", "slot", "warps", "span"),
    "kd.cta_barrier": (),
    "kd.named_barrier": ("id", "threads"),
    "kd.smem_sum": ("value", "slot", "warps"),
    "kd.rsqrt_mean": ("count",),
    "kd.load_rms_weight": ("elems", "dtype", "divby", "at"),
    "kd.rms_scale": ("elems",),
    # cc.rope
    "kd.load_rope_tables": ("elems", "dims", "first", "ratio", "divby", "at"),
    "kd.rope_rotate": ("elems", "first"),
    # cc.hadamard
    "kd.bf16_round": ("elems",),
    "kd.shfl_butterfly": ("mask", "span", "elems"),
    "kd.lane_butterfly": ("elems",),
    "kd.scale": ("elems", "factor"),
    # cc.quant
    "kd.quant_prep": ("elems", "bf16_first", "amax"),
    "kd.lane_max": ("value", "masks", "lanes"),
    "kd.smem_max": ("value", "slot", "warps"),
    "kd.ue8m0_scale": ("floor", "by", "divide", "floor_on"),
    "kd.tensor_scale": ("scalar",),
    # cc.store
    "kd.row_address": ("rows", "token_stride", "scale_dim"),
    "kd.if_cols": ("lo", "hi"),
    "kd.end_cols": (),
    "kd.bf16_words": ("elems",),
    "kd.e4m3_words": ("elems",),
    "kd.e2m1_words": ("elems", "convert"),
    "kd.store_words": ("value", "words", "offset", "lo", "code_bits", "bits", "offsets", "keep"),
    "kd.store_scales": ("lanes", "lo", "block", "first", "stored", "keep"),
    "kd.store_pads": ("lane", "offsets", "keep"),
}
# the row ops lower-row rewrites (each keeps its spec; its kd ops follow it); cc.pool_softmax
# only after a cc.window (the online merge kernel's pool stays a row op)
LOWERED = ("cc.pool_softmax", "cc.rms_norm", "cc.rope", "cc.hadamard", "cc.quant", "cc.store")
# the loads the `kd.row {operands}` / `kd.operand_loads` of the program issue when `at = "early"`,
# with the row op they feed
OPERAND_LOADS = {"kd.load_rms_weight": "cc.rms_norm", "kd.load_rope_tables": "cc.rope"}


class RowNestingError(ValueError):
    """The row body's `kd.if_cols` .. `kd.end_cols` do not nest: the message names the op."""


@dataclass(frozen=True, slots=True)
class RowNode:
    op: Op
    body: tuple[RowNode, ...] = ()


def is_row_op(op: Op) -> bool:
    return op.name in ROW_ATTRS


def lowered_ops(ops: tuple[Op, ...]) -> set[int]:
    """The indices of the coarse ops whose kd ops follow them: their specs, not run themselves."""
    return {i for i, op in enumerate(ops[:-1]) if op.name in LOWERED and is_row_op(ops[i + 1])}


def row_program(ops: tuple[Op, ...]) -> tuple[RowNode, ...]:
    """The row ops (coarse `cc.*` and row-level `kd.*`, the kernel dialect's program left
    out) as a tree nested by `kd.if_cols` .. `kd.end_cols`."""
    stack: list[list[RowNode]] = [[]]
    openers: list[Op] = []
    for op in ops:
        if op.name.startswith("kd.") and not is_row_op(op):
            continue
        if op.name == "kd.end_cols":
            if not openers:
                raise RowNestingError(f"{_at(op)}: closes a store region that was never opened")
            body = stack.pop()
            stack[-1].append(RowNode(openers.pop(), tuple(body)))
        elif op.name == "kd.if_cols":
            openers.append(op)
            stack.append([])
        else:
            stack[-1].append(RowNode(op))
    if openers:
        raise RowNestingError(f"{_at(openers[-1])}: its store region is never closed with kd.end_cols")
    return tuple(stack[0])


def _at(op: Op) -> str:
    return (f"{op.loc}: " if op.loc else "") + op.name
