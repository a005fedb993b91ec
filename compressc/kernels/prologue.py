"""The emitter of the kernel's prologue ops (compressc/passes/lower_grid.py `prologue`): the
lanes' layout, the CTA's rank among a row's CTAs and its shared memory, from the ops' attributes."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels.source import Source


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def lanes(src: Source, module: Module, op: Op) -> None:
    src.line("tidx, _, _ = cute.arch.thread_idx()")
    src.line("lane = tidx % 32")
    src.line("warp = tidx // 32")
    if _a(op, "groups") > 1:
        src.line(f"hlane = tidx % {_a(op, 'head_lanes')}  # lane within one copy of the head")
        src.line(f"group = tidx // {_a(op, 'head_lanes')}  # which part of the window this lane pools")
    else:
        src.line("hlane = tidx")
    src.line(f"col = hlane * {_a(op, 'elems')}  # first channel this lane owns")


def split_rank(src: Source, module: Module, op: Op) -> None:
    """c128a_split: the row's `ctas` CTAs are consecutive blocks of a plain launch."""
    src.line("bidx, _, _ = cute.arch.block_idx()")
    src.line(f"rank = bidx % {_a(op, 'ctas')}  # which part of each window this CTA pools")


def cluster_rank(src: Source, module: Module, op: Op) -> None:
    src.line("rank = cute.arch.block_idx_in_cluster()  # which part of each window this CTA pools")


def stage_smem(src: Source, module: Module, op: Op) -> None:
    """The staged window's slots; their size (`bytes`) is the launch's dynamic smem."""
    src.line("# the window slots: dynamic shared memory (SMEM_DYNAMIC bytes)")
    src.line("sStage = cute.arch.get_dyn_smem(Float32, alignment=16)")
    src.line("stage_base = sStage.toint()")
    src.line("in_page = (Int64(1) << state_block_shift) - 1")


def static_smem(src: Source, module: Module, op: Op) -> None:
    words = _a(op, "words")
    src.line(f"sBuf = cute.make_tensor(cute.arch.alloc_smem(Float32, {words}, alignment=16), "
             f"cute.make_layout({words}))")


PROLOGUE_EMIT = {"kd.lanes": lanes, "kd.split_rank": split_rank, "kd.cluster_rank": cluster_rank,
                 "kd.stage_smem": stage_smem, "kd.static_smem": static_smem}
