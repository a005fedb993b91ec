"""The interpreter of the row body's store ops: the token row's addresses, each lane's code
words (u32, little-endian, as the kernel packs them) and the bytes its stores write at the
byte offsets the ops carry. Only the lanes of the enclosing `kd.if_cols` region store."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compressc.ir.core import Op
from compressc.ir.interp_stages import Lanes
from compressc.numerics import np_bf16_rne, np_e2m1_encode, np_e4m3_encode


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _words(codes: np.ndarray) -> np.ndarray:
    """[lanes, n] bytes -> [lanes, ceil(n / 4)] u32 words, byte 0 in the low bits."""
    pad = -codes.shape[1] % 4
    padded = np.pad(codes.astype(np.uint8), ((0, 0), (0, pad)))
    return np.ascontiguousarray(padded).view("<u4")


def _row_address(lanes: Lanes, op: Op) -> None:
    """token = the kv_slot's row in its page; scales = its scale bytes after the page's rows."""
    mem, kv_slot = lanes.mem, lanes.kv_slot
    shift = mem.scalar("kv_block_shift")
    stride = mem.scalar("k_cache_token_stride") if op.attr("rows") == "runtime" else _a(op, "token_stride")
    page_base = (kv_slot >> shift) * mem.scalar("k_cache_page_stride")
    kv_off = kv_slot & ((1 << shift) - 1)
    lanes.regs["token"] = page_base + kv_off * stride
    lanes.regs["scales"] = page_base + (1 << shift) * stride + kv_off * _a(op, "scale_dim")


def _bf16_words(lanes: Lanes, op: Op) -> None:
    bits = (np_bf16_rne(lanes.y).view(np.uint32) >> 16).astype("<u2")
    lanes.regs["h"] = _words(np.ascontiguousarray(bits).view(np.uint8))


def _e4m3_words(lanes: Lanes, op: Op) -> None:
    lanes.regs["w"] = _words(np_e4m3_encode(lanes.q * lanes.inv[:, None]))


def _e2m1_words(lanes: Lanes, op: Op) -> None:
    nib = np_e2m1_encode(lanes.q * lanes.inv[:, None])
    lanes.regs["n"] = _words((nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8))


def _store_words(lanes: Lanes, op: Op) -> None:
    """Store k writes words k * per .. (per = bits / 32; an 8- or 16-bit store the low bytes
    of word k) at token + offset + (col - lo) * code_bits / 8 + offsets[k]."""
    bits, lo, live = _a(op, "bits"), _a(op, "lo"), lanes.live
    words = lanes.regs[str(op.attr("value"))][live][:, :_a(op, "words")]
    base = lanes.regs["token"] + _a(op, "offset") + (lanes.col[live] - lo) * _a(op, "code_bits") // 8
    data = np.ascontiguousarray(words).view(np.uint8)  # [lanes, 4 * words]
    per, cache = max(1, bits // 32), lanes.mem["k_cache"]
    for k, at in enumerate(op.attr("offsets")):  # type: ignore[arg-type]
        chunk = data[:, 4 * k * per:4 * (k + 1) * per][:, :max(1, bits // 8)]
        cache[(base + int(at))[:, None] + np.arange(chunk.shape[1])] = chunk


def _store_scales(lanes: Lanes, op: Op) -> None:
    """Each quant group's leader (hlane % lanes == 0) writes its scale: the byte e8, or the
    fp32 2^(e8 - 127) (e8 << 23), at scales + first + its group's index."""
    leader = lanes.live & (np.arange(lanes.head_lanes) % _a(op, "lanes") == 0)
    index, cache = (lanes.col[leader] - _a(op, "lo")) // _a(op, "block"), lanes.mem["k_cache"]
    at = lanes.regs["scales"] + _a(op, "first")
    if op.attr("stored") == "f32":
        bytes_ = np.ascontiguousarray((lanes.e8[leader] << 23).astype("<u4")).view(np.uint8).reshape(-1, 4)
        cache[(at + 4 * index)[:, None] + np.arange(4)] = bytes_
    else:
        cache[at + index] = lanes.e8[leader]


def _store_pads(lanes: Lanes, op: Op) -> None:
    lane = _a(op, "lane")
    if lane < lanes.head_lanes and lanes.live[lane]:
        lanes.mem["k_cache"][lanes.regs["scales"] + np.asarray(op.attr("offsets"), dtype=np.int64)] = 0


def _row_span(lanes: Lanes, op: Op, vec: int) -> np.ndarray:
    """The lanes' channels of this row of compressed_kv; a `vec`-wide access must be aligned."""
    start = lanes.row * _a(op, "head") + lanes.col
    if np.any(start % vec):
        from compressc.ir.interp_row import LaneError

        first = int(start[start % vec != 0][0])
        raise LaneError(f"{op.name}: a {vec * 32}-bit access at fp32 element {first}, not a multiple of "
                        f"{vec}")
    return lanes.span(start)


def _store_rows(lanes: Lanes, op: Op) -> None:
    """C128A compress: the pooled row (the L2 policy changes no byte)."""
    lanes.mem["compressed_kv"][_row_span(lanes, op, _a(op, "bits") // 32)] = lanes.x


def _load_rows(lanes: Lanes, op: Op) -> None:
    lanes.x = lanes.mem["compressed_kv"][_row_span(lanes, op, _a(op, "vec"))].astype(np.float32)


def _after_the_prior_grid(lanes: Lanes, op: Op) -> None:
    """The interpreter runs one launch at a time: the grid that wrote the rows has finished."""


STORE_RUN: dict[str, Callable[[Lanes, Op], None]] = {
    "kd.store_rows": _store_rows,
    "kd.load_rows": _load_rows,
    "kd.wait_prior_grid": _after_the_prior_grid,
    "kd.row_address": _row_address,
    "kd.bf16_words": _bf16_words,
    "kd.e4m3_words": _e4m3_words,
    "kd.e2m1_words": _e2m1_words,
    "kd.store_words": _store_words,
    "kd.store_scales": _store_scales,
    "kd.store_pads": _store_pads,
}
