"""The emitter of the row body's rotation, quantisation and store ops (compressc/ir/kd_row.py):
one small function per op, printing its attributes."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels.source import Source
from compressc.kernels.stages_store import store_words as store_words_at


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _keep(op: Op) -> str:
    return ", keep=True" if op.attr("keep") else ""


def bf16_round(src: Source, module: Module, op: Op) -> None:
    elems = _a(op, "elems")
    src.line(f"rQ = cute.make_rmem_tensor(cute.make_layout({elems}), Float32)")
    src.line(f"for e in range_constexpr({elems}):")
    src.line("    rQ[e] = ops.bf16_round(rY[e])")


def shfl_butterfly(src: Source, module: Module, op: Op) -> None:
    mask = op.attr("mask")
    src.line(f"# span {op.attr('span')}: the lower lane keeps a + b, the upper b' = a - b (a = lower's)")
    src.line(f"sgn = Float32(1 - 2 * ((hlane // {mask}) % 2))")
    src.line(f"for e in range_constexpr({op.attr('elems')}):")
    src.line(f"    rQ[e] = rQ[e] * sgn + ops.shfl_xor(rQ[e], {mask})")


def lane_butterfly(src: Source, module: Module, op: Op) -> None:
    elems = _a(op, "elems")
    span = elems // 2
    while span:
        for g in range(0, elems, 2 * span):
            for i in range(g, g + span):
                src.line(f"a, b = rQ[{i}], rQ[{i + span}]")
                src.line(f"rQ[{i}], rQ[{i + span}] = a + b, a - b")
        span //= 2


def scale(src: Source, module: Module, op: Op) -> None:
    src.line(f"for e in range_constexpr({op.attr('elems')}):")
    src.line(f"    rQ[e] = rQ[e] * Float32({float(op.attr('factor'))!r})")  # type: ignore[arg-type]


def quant_prep(src: Source, module: Module, op: Op) -> None:
    """bf16-round (unless a rotation did) and the lane's absmax, in one loop."""
    if op.attr("bf16_first"):
        src.line(f"rQ = cute.make_rmem_tensor(cute.make_layout({op.attr('elems')}), Float32)")
    if op.attr("amax"):
        src.line("amax = Float32(0.0)")
    src.line(f"for e in range_constexpr({op.attr('elems')}):")
    if op.attr("bf16_first"):
        src.line("    rQ[e] = ops.bf16_round(rY[e])")
    if op.attr("amax"):
        src.line("    amax = ops.fmax(amax, ops.fabs(rQ[e]))")


def ue8m0_scale(src: Source, module: Module, op: Op) -> None:
    floor, by = float(op.attr("floor")), float(op.attr("by"))  # type: ignore[arg-type]
    quotient = (lambda v: f"ops.div_rn({v}, Float32({by!r}))") if op.attr("divide") else \
        (lambda v: f"{v} * Float32({by!r})")
    if op.attr("floor_on") == "scale":
        src.line(f"raw = ops.fmax(Float32({floor!r}), {quotient('amax')})")
    else:
        src.line(f"raw = {quotient(f'ops.fmax(amax, Float32({floor!r}))')}")
    src.line("# power of two rounded up: the UE8M0 exponent byte; inv = 2^(127 - e8) exactly")
    src.line("e8 = ((ops.f32_bits(raw) + 0x7FFFFF) >> 23) & 0xFF")
    src.line("inv = ops.bits_f32((254 - e8) << 23)")


def tensor_scale(src: Source, module: Module, op: Op) -> None:
    scalar = op.attr("scalar")
    src.line(f"# one scale per tensor: multiply by RN(1 / {scalar}[0]) (computed by every thread)")
    src.line(f"inv = ops.div_rn(Float32(1.0), cute.make_tensor({scalar}, cute.make_layout(1))[0])")


def row_address(src: Source, module: Module, op: Op) -> None:
    """The token row of kv_slot (page kv_slot >> shift, row kv_slot & (B - 1)) and its scales."""
    stride = "k_cache_token_stride" if op.attr("rows") == "runtime" else str(op.attr("token_stride"))
    src.line("kv_off = kv_slot & ((Int64(1) << kv_block_shift) - 1)")
    src.line("page_base = k_cache.toint() + (kv_slot >> kv_block_shift) * k_cache_page_stride")
    src.line(f"token = page_base + kv_off * {stride}")
    if _a(op, "scale_dim"):
        scale_dim = op.attr("scale_dim")
        src.line(f"scales = page_base + (Int64(1) << kv_block_shift) * {stride} + kv_off * {scale_dim}")


def if_cols(src: Source, module: Module, op: Op) -> None:
    src.line(f"if (col >= {op.attr('lo')}) & (col < {op.attr('hi')}):")
    src.depth += 1


def bf16_words(src: Source, module: Module, op: Op) -> None:
    """Each fp32 value rounded once to bf16, pairs in u32 words (element 2j in the low half)."""
    for j in range(_a(op, "elems") // 2):
        src.line(f"h{j} = ops.bf16x2(rY[{2 * j}], rY[{2 * j + 1}])")


def e4m3_words(src: Source, module: Module, op: Op) -> None:
    """A lane's e4m3 codes in u32 words (element 2j in the lower byte of a pair)."""
    if _a(op, "elems") == 2:
        src.line("w0 = ops.e4m3x2(rQ[0] * inv, rQ[1] * inv)")
    for w in range(_a(op, "elems") // 4):
        b = 4 * w
        src.line(f"w{w} = ops.pack_u16x2(ops.e4m3x2(rQ[{b}] * inv, rQ[{b + 1}] * inv), "
                 f"ops.e4m3x2(rQ[{b + 2}] * inv, rQ[{b + 3}] * inv))")


def e2m1_words(src: Source, module: Module, op: Op) -> None:
    """A lane's e2m1 nibbles, element 2j in the low nibble of byte j, in u32 words."""
    elems = _a(op, "elems")
    if op.attr("convert") == "hw":
        pairs = [f"ops.e2m1x2(rQ[{2 * j}] * inv, rQ[{2 * j + 1}] * inv)" for j in range(elems // 2)]
    else:
        pairs = [f"(ops.e2m1_sw(rQ[{2 * j}] * inv) | (ops.e2m1_sw(rQ[{2 * j + 1}] * inv) << 4))"
                 for j in range(elems // 2)]
    for w in range(0, len(pairs), 4):
        terms = [p if k == 0 else f"({p} << {8 * k})" for k, p in enumerate(pairs[w:w + 4])]
        src.line(f"n{w // 4} = " + " | ".join(terms))


def store_words(src: Source, module: Module, op: Op) -> None:
    """The lane's words from token + offset + (col - lo) * code_bits / 8, one store per
    byte offset, `bits` a store (8 and 16: the low bytes of the first word)."""
    lo, offset, bits, v = _a(op, "lo"), _a(op, "offset"), _a(op, "bits"), op.attr("value")
    col = "col" if lo == 0 else f"(col - {lo})"
    scaled = {8: col, 16: f"2 * {col}", 4: f"{col} // 2"}[_a(op, "code_bits")]
    addr = f"token + {scaled}" if offset == 0 and lo == 0 else f"token + {offset} + {scaled}"
    words = [f"{v}{w}" for w in range(_a(op, "words"))]
    store_words_at(src, addr, words, bits, _keep(op), tuple(op.attr("offsets")))  # type: ignore[arg-type]


def store_scales(src: Source, module: Module, op: Op) -> None:
    lo, first, keep = _a(op, "lo"), _a(op, "first"), _keep(op)
    group = f"{'col' if lo == 0 else f'(col - {lo})'} // {op.attr('block')}"
    src.line(f"if hlane % {op.attr('lanes')} == 0:")
    if op.attr("stored") == "f32":
        at = f"scales + 4 * ({group})" if first == 0 else f"scales + {first} + 4 * ({group})"
        src.line("    # the fp32 scale 2^(e8 - 127): its bit pattern is the exponent byte shifted into place")
        src.line(f"    ops.st_global_b32({at}, e8 << 23{keep})")
    else:
        at = f"scales + {group}" if first == 0 else f"scales + {first} + {group}"
        src.line(f"    ops.st_global_b8({at}, e8{keep})")


def store_pads(src: Source, module: Module, op: Op) -> None:
    src.line(f"if hlane == {op.attr('lane')}:")
    for b in op.attr("offsets"):  # type: ignore[union-attr]
        src.line(f"    ops.st_global_b8(scales + {b}, 0{_keep(op)})")
