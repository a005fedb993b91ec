"""Store helpers the unlowered row ops share (cc.store_rows, the online merge, the ring
state); the epilogue's stores are kernel-dialect ops (compressc/kernels/row_ops_quant.py)."""

from __future__ import annotations

from compressc.ir.core import Module
from compressc.ir.schedule import Schedule
from compressc.kernels.source import Source

STORE_BY_WORDS = {1: "ops.st_global_b32", 2: "ops.st_global_v2", 4: "ops.st_global_v4"}


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
