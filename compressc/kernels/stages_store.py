"""The u32-word store helper every store emitter shares (the epilogue's kd.store_words,
c128a_split's partials, the online merge's stores, kd.store_rows), and C128A's row stores and
loads (kd.store_rows, kd.wait_prior_grid, kd.load_rows)."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels.source import Source

STORE_BY_WORDS = {1: "ops.st_global_b32", 2: "ops.st_global_v2", 4: "ops.st_global_v4"}


def store_words(src: Source, addr: str, words: list[str], bits: int, keep: str,
                offsets: tuple[int, ...] | None = None) -> None:
    """Store u32 `words`, `bits` (8, 16, 32, 64 or 128) a store: store k takes the next bits / 32
    words (an 8- or 16-bit store: the low bytes of one word) to `addr` + offsets[k] bytes;
    without `offsets`, the words are contiguous from `addr` on (one 8- or 16-bit store)."""
    per = max(1, bits // 32)
    if offsets is None:
        offsets = (0,) if bits < 32 else tuple(4 * k for k in range(0, len(words), per))
    store = f"ops.st_global_b{bits}" if bits < 32 else STORE_BY_WORDS[per]
    for k, at in enumerate(offsets):
        target = addr if at == 0 else f"{addr} + {at}"
        src.line(f"{store}({target}, {', '.join(words[k * per:k * per + per])}{keep})")


def _rows_view(op: Op, vec: int) -> str:
    return (f"cute.make_tensor(compressed_kv + cute.assume(Int64(row) * {op.attr('head')} + col, "
            f"divby={vec}), cute.make_layout({op.attr('elems')}))")


def store_rows(src: Source, module: Module, op: Op) -> None:
    """kd.store_rows: the pooled row rX into compressed_kv, `bits` a store, L2-kept with `keep`."""
    bits = int(op.attr("bits"))  # type: ignore[arg-type]
    if not op.attr("keep"):
        src.line(f"cute.autovec_copy(rX, {_rows_view(op, bits // 32)})")
        return
    src.line("# L2 evict_last: the store kernel reads these rows next (cache-hints)")
    src.line(f"kv_at = compressed_kv.toint() + (Int64(row) * {op.attr('head')} + col) * 4")
    words = [f"ops.f32_bits(rX[{e}])" for e in range(int(op.attr("elems")))]  # type: ignore[arg-type]
    store_words(src, "kv_at", words, bits, ", keep=True")


def wait_prior_grid(src: Source, module: Module, op: Op) -> None:
    src.line("# launched early (programmatic stream serialization): the rows are the previous")
    src.line("# grid's output, so wait for it to finish and flush (a no-op once it has)")
    src.line("cute.arch.griddepcontrol_wait()")


def load_rows(src: Source, module: Module, op: Op) -> None:
    src.line(f"rX = cute.make_rmem_tensor(cute.make_layout({op.attr('elems')}), Float32)")
    src.line(f"cute.autovec_copy({_rows_view(op, int(op.attr('vec')))}, rX)")  # type: ignore[arg-type]


ROWS_EMIT = {"kd.store_rows": store_rows, "kd.wait_prior_grid": wait_prior_grid, "kd.load_rows": load_rows}
