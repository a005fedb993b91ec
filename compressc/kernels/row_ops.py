"""The emitter of the row body's lane-level `kd.*` ops (compressc/ir/kd_row.py): one small
function per op, printing its attributes; lower-row made every decision."""

from __future__ import annotations

from collections.abc import Callable

from compressc.ir.core import Module, Op
from compressc.kernels import row_ops_pool as pool
from compressc.kernels import row_ops_quant as q
from compressc.kernels import split_merge
from compressc.kernels.online import ONLINE_EMIT
from compressc.kernels.ring import RING_EMIT
from compressc.kernels.row_ops_window import WINDOW_EMIT
from compressc.kernels.source import Source
from compressc.kernels.stages_store import ROWS_EMIT

Emit = Callable[[Source, Module, Op], None]
_COMBINE = {"add": "{v} = {v} + {x}", "max": "{v} = ops.fmax({v}, {x})"}


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def sum_squares(src: Source, module: Module, op: Op) -> None:
    src.line("ssq = Float32(0.0)")
    src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
    src.line("    ssq = ssq + rX[e] * rX[e]")


def lane_sum(src: Source, module: Module, op: Op) -> None:
    v = op.attr("value")
    for mask in op.attr("masks"):  # type: ignore[union-attr]
        src.line(f"{v} = {v} + ops.shfl_xor({v}, {mask})")


def lane_max(src: Source, module: Module, op: Op) -> None:
    v = op.attr("value")
    src.line(f"# absmax over the {op.attr('lanes')} lanes of one quant block")
    for mask in op.attr("masks"):  # type: ignore[union-attr]
        src.line(f"{v} = ops.fmax({v}, ops.shfl_xor({v}, {mask}))")


def smem_put(src: Source, module: Module, op: Op) -> None:
    span = "" if op.attr("span") == "head" else f": a block spans {op.attr('warps')} warps"
    src.line(f"# one partial per warp through smem, one barrier{span}")
    src.line("if lane == 0:")
    src.line(f"    sBuf[{op.attr('slot')} + warp] = {op.attr('value')}")


def named_barrier(src: Source, module: Module, op: Op) -> None:
    src.line("# only split group 0 runs from here on: a named barrier over its warps")
    src.line(f"cute.arch.barrier(barrier_id={op.attr('id')}, number_of_threads={op.attr('threads')})")


def smem_sum(src: Source, module: Module, op: Op) -> None:
    v, slot = op.attr("value"), op.attr("slot")
    src.line(f"{v} = sBuf[{slot}]")
    src.line(f"for w in range_constexpr(1, {op.attr('warps')}):")
    src.line(f"    {v} = {v} + sBuf[{slot} + w]")


def smem_max(src: Source, module: Module, op: Op) -> None:
    v, warps = op.attr("value"), op.attr("warps")
    src.line(f"g0 = {op.attr('slot')} + (warp // {warps}) * {warps}")
    src.line(f"{v} = sBuf[g0]")
    src.line(f"for w in range_constexpr(1, {warps}):")
    src.line(f"    {v} = ops.fmax({v}, sBuf[g0 + w])")


def rsqrt_mean(src: Source, module: Module, op: Op) -> None:
    src.line(f"rrms = ops.rsqrt(ssq / Float32({float(_a(op, 'count'))}) + rms_norm_eps)")


def load_rms_weight(src: Source, module: Module, op: Op) -> None:
    elems, wtype = _a(op, "elems"), "BFloat16" if op.attr("dtype") == "bf16" else "Float32"
    vec = op.attr("divby")
    src.line(f"rW = cute.make_rmem_tensor(cute.make_layout({elems}), {wtype})")
    src.line(f"cute.autovec_copy(cute.make_tensor(rms_norm_weight + cute.assume(col, divby={vec}), "
             f"cute.make_layout({elems})), rW)")


def rms_scale(src: Source, module: Module, op: Op) -> None:
    elems = _a(op, "elems")
    src.line(f"rY = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line(f"for e in range_constexpr({elems}):")
    src.line("    rY[e] = (rX[e] * rrms) * Float32(rW[e])")


def load_rope_tables(src: Source, module: Module, op: Op) -> None:
    """This lane's cos and sin values (rope lanes only; others keep them unset)."""
    half, dims, first, ratio, vec = _a(op, "elems") // 2, _a(op, "dims"), _a(op, "first"), _a(op, "ratio"), \
        op.attr("divby")
    src.line(f"rCos = cute.make_rmem_tensor(cute.make_layout({half}), Float32)")
    src.line(f"rSin = cute.make_rmem_tensor(cute.make_layout({half}), Float32)")
    src.line(f"if col >= {first}:")
    with src.indent():
        src.line(f"# GPT-J pairs at position (p // {ratio}) * {ratio}")
        src.line(f"cs_row = (pos // {ratio}) * {ratio * dims} + (col - {first}) // 2")
        src.line(f"cute.autovec_copy(cute.make_tensor(cos_sin_cache + cute.assume(cs_row, divby={vec}), "
                 f"cute.make_layout({half})), rCos)")
        src.line(f"cute.autovec_copy(cute.make_tensor(cos_sin_cache + cute.assume(cs_row + {dims // 2}, "
                 f"divby={vec}), cute.make_layout({half})), rSin)")


def rope_rotate(src: Source, module: Module, op: Op) -> None:
    src.line(f"if col >= {op.attr('first')}:")
    with src.indent():
        src.line("# rotate the GPT-J pairs in fp32")
        src.line(f"for j in range_constexpr({_a(op, 'elems') // 2}):")
        with src.indent():
            src.line("a = rY[2 * j]")
            src.line("b = rY[2 * j + 1]")
            src.line("rY[2 * j] = a * rCos[j] - b * rSin[j]")
            src.line("rY[2 * j + 1] = a * rSin[j] + b * rCos[j]")


def _lines(*lines: str) -> Emit:
    def emit(src: Source, module: Module, op: Op) -> None:
        for line in lines:
            src.line(line)

    return emit


ROW_EMIT: dict[str, Emit] = {
    **WINDOW_EMIT,
    **ROWS_EMIT,
    **ONLINE_EMIT,
    "kd.put_partials": pool.put_partials,
    "kd.fold_groups": pool.fold_groups,
    "kd.cluster_barrier": pool.cluster_barrier,
    "kd.dsmem_put_partials": pool.dsmem_put_partials,
    "kd.fold_ranks": pool.fold_ranks,
    "kd.pooled": pool.pooled,
    "kd.only_group0": pool.only("if group == 0:"),
    "kd.only_rank0": pool.only("if rank == 0:"),
    **split_merge.SPLIT_EMIT,
    **RING_EMIT,
    "kd.only_last": pool.only("if last:"),
    "kd.sum_squares": sum_squares,
    "kd.lane_sum": lane_sum,
    "kd.smem_put": smem_put,
    "kd.cta_barrier": _lines("cute.arch.sync_threads()"),
    "kd.named_barrier": named_barrier,
    "kd.smem_sum": smem_sum,
    "kd.rsqrt_mean": rsqrt_mean,
    "kd.load_rms_weight": load_rms_weight,
    "kd.rms_scale": rms_scale,
    "kd.load_rope_tables": load_rope_tables,
    "kd.rope_rotate": rope_rotate,
    "kd.bf16_round": q.bf16_round,
    "kd.shfl_butterfly": q.shfl_butterfly,
    "kd.lane_butterfly": q.lane_butterfly,
    "kd.scale": q.scale,
    "kd.quant_prep": q.quant_prep,
    "kd.lane_max": lane_max,
    "kd.smem_max": smem_max,
    "kd.ue8m0_scale": q.ue8m0_scale,
    "kd.tensor_scale": q.tensor_scale,
    "kd.row_address": q.row_address,
    "kd.if_cols": q.if_cols,
    "kd.bf16_words": q.bf16_words,
    "kd.e4m3_words": q.e4m3_words,
    "kd.e2m1_words": q.e2m1_words,
    "kd.store_words": q.store_words,
    "kd.store_scales": q.store_scales,
    "kd.store_pads": q.store_pads,
}
