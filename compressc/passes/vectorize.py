"""vectorize: give every global access of a lane its vector width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.passes.base import ModulePass, require_thread_map
from compressc.specs.formats import CODEC_BITS

DTYPE_BITS = {"f32": 32, "bf16": 16, "u8": 8}


@dataclass(frozen=True, slots=True)
class Vectorize(ModulePass):
    """Split each lane's contiguous run of channels into `bits`-wide accesses.

    Expects: module sched `elems_per_lane` (run `thread-map` first).
    Leaves:  `vector_bits` on cc.window, cc.load_rows, cc.store_rows, cc.online_merge and
             cc.online_store (fp32 runs),
             cc.rms_norm (the weight run), cc.rope (cos/sin runs) and cc.store
             (`value_bits`: one lane's run of its region's codes, CODEC_BITS each); each is
             min(bits, the run's size), so a 16-byte vector is only used where a
             lane owns 16 contiguous bytes. 128 bits is the widest global access.
    Options: bits (32, 64 or 128).
    """

    name: ClassVar[str] = "vectorize"
    bits: int = 128

    def __post_init__(self) -> None:
        # 128 bits (ld.global.v4.f32) is the widest global access PTX has
        if self.bits not in (32, 64, 128):
            raise ValueError(f"vectorize bits={self.bits}: must be 32, 64 or 128")

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        elems = int(module.get("elems_per_lane", 0))  # type: ignore[arg-type]
        fp32_run = self._width(elems * 32)
        for name in ("cc.window", "cc.load_rows", "cc.store_rows", "cc.online_merge", "cc.online_store"):
            module = module.replace_ops(name, lambda op: op.with_sched(vector_bits=fp32_run))
        module = module.replace_ops("cc.rms_norm", lambda op: self._weights(op, elems))
        module = module.replace_ops("cc.rope", lambda op: op.with_sched(vector_bits=self._width(elems * 16)))
        return module.replace_ops("cc.store", lambda op: self._store(op, elems))

    def _width(self, run_bits: int) -> int:
        return max(8, min(self.bits, run_bits))

    def _weights(self, op: Op, elems: int) -> Op:
        return op.with_sched(vector_bits=self._width(elems * DTYPE_BITS[str(op.attr("weight_dtype"))]))

    def _store(self, op: Op, elems: int) -> Op:
        return op.with_sched(value_bits=self._width(elems * CODEC_BITS[str(op.attr("codec"))]))
