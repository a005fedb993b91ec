"""Emitters of block quantisation and the packed cache store."""

from __future__ import annotations

import numpy as np

from compressc.ir.core import Module, Op
from compressc.ir.schedule import Schedule
from compressc.kernels.source import Source

STORE_BY_WORDS = {1: "ops.st_global_b32", 2: "ops.st_global_v2", 4: "ops.st_global_v4"}


def _channels(op: Op) -> tuple[int, int]:
    lo, hi = op.attr("channels")  # type: ignore[misc]
    return int(lo), int(hi)


def quant(src: Source, module: Module, op: Op) -> None:
    """bf16-round (unless a rotation did), then the region's scale: a block absmax over the
    lane group and its power of two, or one per-tensor reciprocal."""
    elems, block_scale = Schedule.of(module).elems, op.attr("scale") == "block"
    if op.attr("bf16_first"):
        src.line(f"rQ = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    if block_scale:
        src.line("amax = Float32(0.0)")
    if op.attr("bf16_first") or block_scale:
        src.line(f"for e in range_constexpr({elems}):")
        if op.attr("bf16_first"):
            src.line("    rQ[e] = ops.bf16_round(rY[e])")
        if block_scale:
            src.line("    amax = ops.fmax(amax, ops.fabs(rQ[e]))")
    if block_scale:
        _block_scale(src, module, op)
    else:
        scalar = op.operands[1]
        src.line(f"# one scale per tensor: multiply by RN(1 / {scalar}[0]) (computed by every thread)")
        src.line(f"inv = ops.div_rn(Float32(1.0), cute.make_tensor({scalar}, cute.make_layout(1))[0])")


def _block_scale(src: Source, module: Module, op: Op) -> None:
    floor, qmax = float(op.attr("scale_floor")), float(op.attr("qmax"))  # type: ignore[arg-type]
    src.line(f"# absmax over the {op.get('lanes_per_group')} lanes of one quant block")
    for mask in op.get("group_tree"):  # type: ignore[union-attr]
        src.line(f"amax = ops.fmax(amax, ops.shfl_xor(amax, {mask}))")
    if op.get("cross_warp") == "smem":
        _group_amax(src, module, op)
    quotient = (lambda v: f"ops.div_rn({v}, Float32({qmax!r}))") if op.attr("divide") else \
        (lambda v: f"{v} * Float32({float(np.float32(1.0 / qmax))!r})")
    if op.attr("floor_on") == "scale":
        src.line(f"raw = ops.fmax(Float32({floor!r}), {quotient('amax')})")
    else:
        src.line(f"raw = {quotient(f'ops.fmax(amax, Float32({floor!r}))')}")
    src.line("# power of two rounded up: the UE8M0 exponent byte; inv = 2^(127 - e8) exactly")
    src.line("e8 = ((ops.f32_bits(raw) + 0x7FFFFF) >> 23) & 0xFF")
    src.line("inv = ops.bits_f32((254 - e8) << 23)")


def hadamard(src: Source, module: Module, op: Op) -> None:
    """bf16-round, then the fixed-order fp32 butterfly (spans size/2 .. 1, widest first:
    across lanes by shuffles, then inside a lane), then the 1/sqrt(size) scale."""
    elems = Schedule.of(module).elems
    src.line(f"rQ = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line(f"for e in range_constexpr({elems}):")
    src.line("    rQ[e] = ops.bf16_round(rY[e])")
    for mask in op.get("lane_masks"):  # type: ignore[union-attr]
        src.line(f"# span {mask * elems}: the lower lane keeps a + b, the upper b' = a - b (a = lower's)")
        src.line(f"sgn = Float32(1 - 2 * ((hlane // {mask}) % 2))")
        src.line(f"for e in range_constexpr({elems}):")
        src.line(f"    rQ[e] = rQ[e] * sgn + ops.shfl_xor(rQ[e], {mask})")
    span = elems // 2
    while span:
        for g in range(0, elems, 2 * span):
            for i in range(g, g + span):
                src.line(f"a, b = rQ[{i}], rQ[{i + span}]")
                src.line(f"rQ[{i}], rQ[{i + span}] = a + b, a - b")
        span //= 2
    src.line(f"for e in range_constexpr({elems}):")
    src.line(f"    rQ[e] = rQ[e] * Float32({float(op.attr('scale'))!r})")


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
    """Pack a lane's e4m3 codes into u32 words (element 2j in the lower byte of a pair)."""
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


def _bf16_words(src: Source, elems: int) -> list[str]:
    """Each fp32 value rounded once to bf16, pairs in u32 words (element 2j in the low half)."""
    for j in range(elems // 2):
        src.line(f"h{j} = ops.bf16x2(rY[{2 * j}], rY[{2 * j + 1}])")
    return [f"h{j}" for j in range(elems // 2)]


def _e2m1_words(src: Source, elems: int, convert: str) -> list[str]:
    """A lane's e2m1 nibbles, element 2j in the low nibble of byte j, in u32 words."""
    if convert == "hw":
        pairs = [f"ops.e2m1x2(rQ[{2 * j}] * inv, rQ[{2 * j + 1}] * inv)" for j in range(elems // 2)]
    else:
        pairs = [f"(ops.e2m1_sw(rQ[{2 * j}] * inv) | (ops.e2m1_sw(rQ[{2 * j + 1}] * inv) << 4))"
                 for j in range(elems // 2)]
    words = []
    for w in range(0, len(pairs), 4):
        terms = [p if k == 0 else f"({p} << {8 * k})" for k, p in enumerate(pairs[w:w + 4])]
        src.line(f"n{w // 4} = " + " | ".join(terms))
        words.append(f"n{w // 4}")
    return words


def cache_hinted(module: Module) -> bool:
    """cache-hints: read-once window loads, L2 evict_last stores."""
    return Schedule.of(module).cache_hints == "stream"


def keep_arg(module: Module) -> str:
    """The extra argument of a store of the kernel's output: L2 evict_last when hinted."""
    return ", keep=True" if cache_hinted(module) else ""


def store_words(src: Source, addr: str, words: list[str], bits: int, keep: str) -> None:
    """Store u32 `words` from `addr` on, `bits` (8, 16, 32, 64 or 128) a store."""
    if bits in (8, 16):
        src.line(f"ops.st_global_b{bits}({addr}, {words[0]}{keep})")
        return
    per = bits // 32
    for k in range(0, len(words), per):
        chunk = words[k:k + per]
        target = addr if k == 0 else f"{addr} + {4 * k}"
        src.line(f"{STORE_BY_WORDS[per]}({target}, {', '.join(chunk)}{keep})")


def _row_addresses(src: Source, op: Op) -> None:
    """The token row of kv_slot (page kv_slot >> shift, row kv_slot & (B - 1)) and its scales."""
    stride = "k_cache_token_stride" if op.attr("rows") == "runtime" else str(op.attr("token_stride"))
    src.line("kv_off = kv_slot & ((Int64(1) << kv_block_shift) - 1)")
    src.line("page_base = k_cache.toint() + (kv_slot >> kv_block_shift) * k_cache_page_stride")
    src.line(f"token = page_base + kv_off * {stride}")
    if int(op.attr("scale_dim")):  # type: ignore[arg-type]
        scale_dim = op.attr("scale_dim")
        src.line(f"scales = page_base + (Int64(1) << kv_block_shift) * {stride} + kv_off * {scale_dim}")


def _at(base: str, offset: int, lo: int, bits: int) -> str:
    """The byte address of this lane's first code: base + offset + (col - lo) * bits / 8."""
    col = "col" if lo == 0 else f"(col - {lo})"
    scaled = {8: col, 16: f"2 * {col}", 4: f"{col} // 2"}[bits]
    return f"{base} + {scaled}" if offset == 0 and lo == 0 else f"{base} + {offset} + {scaled}"


def store(src: Source, module: Module, op: Op) -> None:
    """One region of the token row: the lanes owning its channels encode and store their
    codes, the quant groups' leaders their scales, the region's first lane the pad bytes."""
    elems, codec = Schedule.of(module).elems, str(op.attr("codec"))
    lo, hi = _channels(op)
    if op is next(module.iter("cc.store")):
        _row_addresses(src, op)
    whole = lo == 0 and hi == int(module.attr("head"))  # type: ignore[arg-type]
    if not whole:
        src.line(f"if (col >= {lo}) & (col < {hi}):")
    with src.indent(0 if whole else 1):
        if codec == "bf16":
            words = _bf16_words(src, elems)
        elif codec == "e2m1":
            words = _e2m1_words(src, elems, str(module_quant(module, op).get("convert")))
        else:
            words = _code_words(src, elems)
        bits = {"bf16": 16, "e2m1": 4}.get(codec, 8)
        store_words(src, _at("token", int(op.attr("offset")), lo, bits), words,  # type: ignore[arg-type]
                    int(op.get("value_bits")), keep_arg(module))  # type: ignore[arg-type]
        quant_op = module_quant(module, op)
        if quant_op is not None and quant_op.attr("stored") != "none":
            _store_scales(src, module, op, quant_op)


def module_quant(module: Module, op: Op) -> Op | None:
    """The cc.quant whose result `op` stores (None for a bf16 region)."""
    return next((q for q in module.iter("cc.quant") if q.result == op.operands[0]), None)


def _store_scales(src: Source, module: Module, op: Op, quant_op: Op) -> None:
    lo, hi = _channels(op)
    block, lanes = int(quant_op.attr("block")), int(quant_op.get("lanes_per_group"))  # type: ignore[arg-type]
    first, keep = int(op.attr("scale_offset")), keep_arg(module)  # type: ignore[arg-type]
    group = f"{'col' if lo == 0 else f'(col - {lo})'} // {block}"
    at = f"scales + {group}" if first == 0 else f"scales + {first} + {group}"
    src.line(f"if hlane % {lanes} == 0:")
    if quant_op.attr("stored") == "f32":
        src.line("    # the fp32 scale 2^(e8 - 127): its bit pattern is the exponent byte shifted into place")
        src.line(f"    ops.st_global_b32({at.replace(group, f'4 * ({group})')}, e8 << 23{keep})")
    else:
        src.line(f"    ops.st_global_b8({at}, e8{keep})")
    end = first + (hi - lo) // block * (4 if quant_op.attr("stored") == "f32" else 1)
    pads = range(end, end + int(op.attr("pad")))  # type: ignore[arg-type]
    if pads:
        src.line(f"if hlane == {lo // Schedule.of(module).elems}:")
        for b in pads:
            src.line(f"    ops.st_global_b8(scales + {b}, 0{keep})")
