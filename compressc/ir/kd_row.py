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
    # cc.ring_state, the C128 ring's rows of this row's window (compressc/passes/lower_row_window.py)
    "kd.ring_window": ("window",),
    "kd.ring_base": ("window", "row_words"),
    # cc.window (compressc/passes/lower_row_window.py)
    "kd.window_start": ("window",),
    "kd.page_table": (),
    "kd.ring_rows": (),
    "kd.softmax_init": ("elems",),
    "kd.lane_pages": ("rows", "groups", "ranks", "absent"),
    "kd.l2_prefetch": ("rows", "row_bytes"),
    "kd.window_chunks": ("chunks", "batch", "rows", "groups", "ranks", "lane_pages"),
    "kd.load_batch": ("rows", "elems", "vec"),
    "kd.paged_row": ("elems", "vec", "absent", "streams", "ratio", "head", "width", "page", "cache_hint"),
    "kd.ring_row": ("elems", "vec", "head", "width", "cache_hint"),
    "kd.online_update": ("elems", "rows", "absent", "rescale"),
    "kd.smem_rows": ("rows", "elems", "copies", "threads", "slot_words"),
    "kd.online_row": ("elems", "absent"),
    "kd.end_loop": (),
    # cc.pool_softmax: the split groups' and the cluster's partials merged through smem
    "kd.put_partials": ("slot", "stride", "head", "elems"),
    "kd.fold_groups": ("slot", "stride", "head", "elems", "groups"),
    "kd.cluster_barrier": ("after", "ranks"),
    "kd.dsmem_put_partials": ("slot", "stride", "head", "elems", "group0"),
    "kd.fold_ranks": ("slot", "stride", "head", "elems", "ranks", "absent", "group0"),
    "kd.pooled": ("elems",),
    "kd.only_group0": (),
    "kd.only_rank0": (),
    # c128a_split: the row's CTAs merge through the global workspace (compressc/passes/lower_row_split.py)
    "kd.publish_partial": ("head", "ctas", "elems", "bits", "row_bytes", "group0"),
    "kd.arrive_last": ("ctas", "flag"),
    "kd.if_last": (),
    "kd.split_lanes": ("me", "ctas", "elems"),
    "kd.if_tidx": ("below",),
    "kd.load_partials": ("head", "ctas", "me", "vec"),
    "kd.fold_partials": ("me", "ctas"),
    "kd.merged_to_lanes": ("me",),
    "kd.merged_to_smem": ("me", "slot", "head"),
    "kd.lanes_from_smem": ("elems", "slot", "head"),
    "kd.end_if": (),
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
    # C128A's two kernels: cc.store_rows, cc.load_rows (compressc/passes/lower_row_store.py)
    "kd.store_rows": ("elems", "head", "bits", "keep"),
    "kd.wait_prior_grid": (),
    "kd.load_rows": ("elems", "head", "vec"),
    # the online merge kernel: cc.online_merge, cc.online_store (compressc/passes/lower_row_online.py)
    "kd.seed_state": ("elems", "head", "vec"),
    "kd.segment_batches": ("batch", "elems", "vec", "ratio", "head", "cache_hint"),
    "kd.emit_pooled": ("elems", "head", "bits", "keep"),
    "kd.write_state": ("elems", "head", "bits", "keep"),
}
# the row ops lower-row rewrites (each keeps its spec; its kd ops follow it)
LOWERED = ("cc.ring_state", "cc.window", "cc.load_rows", "cc.store_rows", "cc.online_merge",
           "cc.online_store", "cc.pool_softmax", "cc.rms_norm", "cc.rope", "cc.hadamard", "cc.quant",
           "cc.store")
# the loads the `kd.row {operands}` / `kd.operand_loads` of the program issue when `at = "early"`,
# with the row op they feed
OPERAND_LOADS = {"kd.load_rms_weight": "cc.rms_norm", "kd.load_rope_tables": "cc.rope"}


# the row body's ops that open a body, with the op that closes it
ROW_OPENERS = {"kd.if_cols": "kd.end_cols", "kd.window_chunks": "kd.end_loop", "kd.load_batch": "kd.end_loop",
               "kd.smem_rows": "kd.end_loop", "kd.if_last": "kd.end_if", "kd.if_tidx": "kd.end_if"}
ROW_CLOSERS = frozenset(ROW_OPENERS.values())
_BODY = {"kd.end_cols": "store region", "kd.end_loop": "window loop", "kd.end_if": "branch"}


class RowNestingError(ValueError):
    """The row body's `kd.if_cols` .. `kd.end_cols` do not nest: the message names the op."""


@dataclass(frozen=True, slots=True)
class RowNode:
    op: Op
    body: tuple[RowNode, ...] = ()


def is_row_op(op: Op) -> bool:
    return op.name in ROW_ATTRS


def row_program(ops: tuple[Op, ...]) -> tuple[RowNode, ...]:
    """The row ops (coarse `cc.*` and row-level `kd.*`, the kernel dialect's program left
    out) as a tree nested by ROW_OPENERS (`kd.if_cols` .. `kd.end_cols`, the window's loops
    .. `kd.end_loop`)."""
    stack: list[list[RowNode]] = [[]]
    openers: list[Op] = []
    for op in ops:
        if op.name.startswith("kd.") and not is_row_op(op):
            continue
        if op.name in ROW_CLOSERS:
            if not openers or ROW_OPENERS[openers[-1].name] != op.name:
                raise RowNestingError(f"{_at(op)}: closes a {_BODY[op.name]} that was never opened")
            body = stack.pop()
            stack[-1].append(RowNode(openers.pop(), tuple(body)))
        elif op.name in ROW_OPENERS:
            openers.append(op)
            stack.append([])
        else:
            stack[-1].append(RowNode(op))
    if openers:
        closer = ROW_OPENERS[openers[-1].name]
        raise RowNestingError(f"{_at(openers[-1])}: its {_BODY[closer]} is never closed with {closer}")
    return tuple(stack[0])


def _at(op: Op) -> str:
    return (f"{op.loc}: " if op.loc else "") + op.name
