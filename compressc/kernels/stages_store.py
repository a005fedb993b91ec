"""Emitters of block quantisation and the packed cache store."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.schedule import Schedule
from compressc.kernels.source import Source

STORE_BY_WORDS = {1: "ops.st_global_b32", 2: "ops.st_global_v2", 4: "ops.st_global_v4"}


def _channels(op: Op) -> tuple[int, int]:
    lo, hi = op.attr("channels")  # type: ignore[misc]
    return int(lo), int(hi)


def quant(src: Source, module: Module, op: Op) -> None:
    """bf16-round, block absmax over the lane group, UE8M0 scale, e4m3 codes."""
    elems = Schedule.of(module).elems
    lo, hi = _channels(op)
    floor, fp8_max = float(op.attr("scale_floor")), float(op.attr("fp8_max"))  # type: ignore[arg-type]
    src.line(f"rQ = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line("amax = Float32(0.0)")
    src.line(f"for e in range_constexpr({elems}):")
    src.line("    rQ[e] = ops.bf16_round(rY[e])")
    src.line("    amax = ops.fmax(amax, ops.fabs(rQ[e]))")
    src.line(f"# absmax over the {op.get('lanes_per_group')} lanes of one quant block")
    for mask in op.get("group_tree"):  # type: ignore[union-attr]
        src.line(f"amax = ops.fmax(amax, ops.shfl_xor(amax, {mask}))")
    if op.get("cross_warp") == "smem":
        _group_amax(src, module, op)
    if op.attr("floor_on") == "scale":
        src.line(f"raw = ops.fmax(Float32({floor!r}), ops.div_rn(amax, Float32({fp8_max!r})))")
    else:
        src.line(f"raw = ops.div_rn(ops.fmax(amax, Float32({floor!r})), Float32({fp8_max!r}))")
    src.line("# power of two rounded up: the UE8M0 exponent byte; inv = 2^(127 - e8) exactly")
    src.line("e8 = ((ops.f32_bits(raw) + 0x7FFFFF) >> 23) & 0xFF")
    src.line("inv = ops.bits_f32((254 - e8) << 23)")
    src.line(f"in_quant = (col >= {lo}) & (col < {hi})")


def head_barrier(src: Source, module: Module) -> None:
    """A CTA barrier, or after a split merge (inside `if group == 0`) a named barrier of group 0's warps.

    bar.sync 0 counts every thread of the CTA: executed by group 0 alone it is a barrier in
    divergent code, which the CUDA model leaves undefined; bar.sync 1, head_lanes is not.
    """
    if Schedule.of(module).split == 1:
        src.line("cute.arch.sync_threads()")
        return
    src.line("# only split group 0 runs from here on: a named barrier over its warps")
    src.line(f"cute.arch.barrier(barrier_id=1, number_of_threads={Schedule.of(module).head_lanes})")


def _group_amax(src: Source, module: Module, op: Op) -> None:
    """A quant block of several warps: each warp's max through smem, one barrier."""
    base, warps = int(op.get("smem_offset")) // 4, int(op.get("lanes_per_group")) // 32  # type: ignore[arg-type]
    src.line(f"# one partial per warp through smem, one barrier: a block spans {warps} warps")
    src.line("if lane == 0:")
    src.line(f"    sBuf[{base} + warp] = amax")
    head_barrier(src, module)
    src.line(f"g0 = {base} + (warp // {warps}) * {warps}")
    src.line("amax = sBuf[g0]")
    src.line(f"for w in range_constexpr(1, {warps}):")
    src.line("    amax = ops.fmax(amax, sBuf[g0 + w])")


def _code_words(src: Source, elems: int) -> list[str]:
    """Pack a lane's codes into u32 words (element 2j in the lower byte of a pair)."""
    if elems == 2:
        src.line("w0 = ops.e4m3x2(rQ[0] * inv, rQ[1] * inv)")
        return ["w0"]
    words = []
    for w in range(elems // 4):
        b = 4 * w
        src.line(f"w{w} = ops.pack_u16x2(ops.e4m3x2(rQ[{b}] * inv, rQ[{b + 1}] * inv), "
                 f"ops.e4m3x2(rQ[{b + 2}] * inv, rQ[{b + 3}] * inv))")
        words.append(f"w{w}")
    return words


def cache_hinted(module: Module) -> bool:
    """window-prefetch{cache-hints=stream}: read-once window loads, L2 evict_last stores."""
    return Schedule.of(module).cache_hints == "stream"


def keep_arg(module: Module) -> str:
    """The extra argument of a store of the kernel's output: L2 evict_last when hinted."""
    return ", keep=True" if cache_hinted(module) else ""


def store_words(src: Source, addr: str, words: list[str], bits: int, keep: str) -> None:
    """Store u32 `words` from `addr` on, `bits` (16, 32, 64 or 128) a store."""
    if bits == 16:
        src.line(f"ops.st_global_b16({addr}, {words[0]}{keep})")
        return
    per = bits // 32
    for k in range(0, len(words), per):
        chunk = words[k:k + per]
        target = addr if k == 0 else f"{addr} + {4 * k}"
        src.line(f"{STORE_BY_WORDS[per]}({target}, {', '.join(chunk)}{keep})")


def store(src: Source, module: Module, op: Op) -> None:
    elems = Schedule.of(module).elems
    quant_op = module.find("cc.quant")
    assert quant_op is not None
    stride, scale_dim = int(op.attr("token_stride")), int(op.attr("scale_dim"))  # type: ignore[arg-type]
    src.line("kv_off = kv_slot & ((Int64(1) << kv_block_shift) - 1)")
    src.line("page_base = k_cache.toint() + (kv_slot >> kv_block_shift) * k_cache_page_stride")
    src.line(f"token = page_base + kv_off * {stride}")
    src.line(f"scales = page_base + (Int64(1) << kv_block_shift) * {stride} + kv_off * {scale_dim}")
    if op.attr("layout") == "fp8_ds_mla":
        _store_mla(src, module, op, quant_op, elems)
    else:
        _store_indexer(src, module, op, quant_op, elems)


def _store_mla(src: Source, module: Module, op: Op, quant_op: Op, elems: int) -> None:
    block = int(quant_op.attr("block"))  # type: ignore[arg-type]
    lanes = int(quant_op.get("lanes_per_group"))  # type: ignore[arg-type]
    _, nope = _channels(quant_op)
    scale_dim, pad = int(op.attr("scale_dim")), int(op.attr("pad"))  # type: ignore[arg-type]
    keep = keep_arg(module)
    src.line("if in_quant:")
    with src.indent():
        words = _code_words(src, elems)
        store_words(src, "token + col", words, int(op.get("value_bits")), keep)  # type: ignore[arg-type]
        src.line(f"if hlane % {lanes} == 0:")
        src.line(f"    ops.st_global_b8(scales + col // {block}, e8{keep})")
        src.line("if tidx == 0:")
        with src.indent():
            for b in range(nope // block, scale_dim):
                src.line(f"ops.st_global_b8(scales + {b}, {pad}{keep})")
    src.line("else:")
    with src.indent():
        src.line("# rope: each rotated fp32 value rounded once to bf16, real part first")
        pairs = [f"ops.bf16x2(rY[{2 * j}], rY[{2 * j + 1}])" for j in range(elems // 2)]
        for j, pair in enumerate(pairs):
            src.line(f"h{j} = {pair}")
        store_words(src, f"token + {nope} + 2 * (col - {nope})", [f"h{j}" for j in range(len(pairs))],
                     int(op.get("rope_bits")), keep)  # type: ignore[arg-type]


def _store_indexer(src: Source, module: Module, op: Op, quant_op: Op, elems: int) -> None:
    block = int(quant_op.attr("block"))  # type: ignore[arg-type]
    lanes = int(quant_op.get("lanes_per_group"))  # type: ignore[arg-type]
    keep = keep_arg(module)
    words = _code_words(src, elems)
    store_words(src, "token + col", words, int(op.get("value_bits")), keep)  # type: ignore[arg-type]
    src.line(f"if hlane % {lanes} == 0:")
    src.line("    # the fp32 scale 2^(e8 - 127): its bit pattern is the exponent byte shifted into place")
    src.line(f"    ops.st_global_b32(scales + 4 * (col // {block}), e8 << 23{keep})")
