"""lower-row's store regions: the code words of a region's lanes and the byte offsets of
their stores, its quant groups' scale bytes and its pad bytes (docs/kernels.md §8)."""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields
from compressc.ir.schedule import Schedule

# bits of one stored code of each codec
CODE_BITS = {"bf16": 16, "e2m1": 4}


def _kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def _channels(op: Op) -> tuple[int, int]:
    lo, hi = op.attr("channels")  # type: ignore[misc]
    return int(lo), int(hi)


def quant_of(module: Module, op: Op) -> Op | None:
    """The cc.quant whose result `op` stores (None for a bf16 region)."""
    return next((q for q in module.iter("cc.quant") if q.result == op.operands[0]), None)


def store_ops(module: Module, op: Op) -> list[Op]:
    """One region of the token row: the row's addresses (first region), then inside the
    region's lanes their words, the word stores, the scales and the pads."""
    sched, (lo, hi) = Schedule.of(module), _channels(op)
    keep = sched.cache_hints == "stream"  # cache-hints: L2 evict_last on the output
    ops = []
    if op is next(module.iter("cc.store")):
        ops.append(_kd("row_address", rows=str(op.attr("rows")), token_stride=int(op.attr("token_stride")),  # type: ignore[arg-type]
                       scale_dim=int(op.attr("scale_dim"))))  # type: ignore[arg-type]
    whole = lo == 0 and hi == int(module.attr("head"))  # type: ignore[arg-type]
    body = _words(module, op, sched.elems, keep)
    quant = quant_of(module, op)
    if quant is not None and quant.attr("stored") != "none":
        body += _scales(op, quant, sched.elems, keep)
    if whole:
        return ops + body
    return ops + [_kd("if_cols", lo=lo, hi=hi), *body, _kd("end_cols")]


def _words(module: Module, op: Op, elems: int, keep: bool) -> list[Op]:
    codec, (lo, _) = str(op.attr("codec")), _channels(op)
    if codec == "bf16":
        conv, value, count = _kd("bf16_words", elems=elems), "h", elems // 2
    elif codec == "e2m1":
        quant = quant_of(module, op)
        assert quant is not None
        conv = _kd("e2m1_words", elems=elems, convert=str(quant.get("convert")))
        value, count = "n", -(-elems // 8)  # a byte per pair of codes, 4 bytes a word
    else:
        conv, value, count = _kd("e4m3_words", elems=elems), "w", max(1, elems // 4)
    bits = int(op.get("value_bits"))  # type: ignore[arg-type]
    per = max(1, bits // 32)  # an 8- or 16-bit store takes the low bytes of one word
    offsets = (0,) if bits < 32 else tuple(4 * k for k in range(0, count, per))
    store = _kd("store_words", value=value, words=count, offset=int(op.attr("offset")), lo=lo,  # type: ignore[arg-type]
                code_bits=CODE_BITS.get(codec, 8), bits=bits, offsets=offsets, keep=keep)
    return [conv, store]


def _scales(op: Op, quant: Op, elems: int, keep: bool) -> list[Op]:
    """The groups' leaders store their scale (a byte, or the fp32 2^(e8 - 127)); the region's
    first lane the pad bytes after the last scale."""
    lo, hi = _channels(op)
    block, first, stored = int(quant.attr("block")), int(op.attr("scale_offset")), str(quant.attr("stored"))  # type: ignore[arg-type]
    ops = [_kd("store_scales", lanes=int(quant.get("lanes_per_group")), lo=lo, block=block, first=first,  # type: ignore[arg-type]
               stored=stored, keep=keep)]
    end = first + (hi - lo) // block * (4 if stored == "f32" else 1)
    pads = tuple(range(end, end + int(op.attr("pad"))))  # type: ignore[arg-type]
    if pads:
        ops.append(_kd("store_pads", lane=lo // elems, offsets=pads, keep=keep))
    return ops


def store_rows_ops(module: Module, op: Op) -> list[Op]:
    """C128A compress: the pooled row as fp32 into compressed_kv, kept in L2 (evict_last) with
    cache-hints, since the store kernel reads it next."""
    sched = Schedule.of(module)
    return [_kd("store_rows", elems=sched.elems, head=int(op.attr("head")),  # type: ignore[arg-type]
                bits=int(op.get("vector_bits")), keep=sched.cache_hints == "stream")]  # type: ignore[arg-type]


def load_rows_ops(module: Module, op: Op) -> list[Op]:
    """C128A store: the pooled row from compressed_kv; launched early (overlap-launch), the
    kernel first waits for the grid that wrote it."""
    sched = Schedule.of(module)
    wait = [_kd("wait_prior_grid")] if sched.grid_dependency == "wait" else []
    return wait + [_kd("load_rows", elems=sched.elems, head=int(op.attr("head")),  # type: ignore[arg-type]
                       vec=int(op.get("vector_bits")) // 32)]  # type: ignore[arg-type]
