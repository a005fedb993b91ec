"""quant-convert: how an e2m1 quantisation converts fp32 to nibbles on the target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.passes.base import ModulePass


@dataclass(frozen=True, slots=True)
class QuantConvert(ModulePass):
    """Choose the e2m1 conversion of every cc.quant with codec "e2m1".

    Expects: nothing (spec-level ops).
    Leaves:  cc.quant `convert` ("hw": `cvt.rn.satfinite.e2m1x2.f32`, which ptxas accepts
             for sm_100a but refuses for sm_90a; "sw": the same rounding from compares
             and the fp32 sign bit, docs/kernels.md §8, for any target).
    Options: e2m1 ("sw" or "hw"; resolve_pipeline picks "hw" for a target that has it).
    """

    name: ClassVar[str] = "quant-convert"
    e2m1: str = "sw"

    def __post_init__(self) -> None:
        if self.e2m1 not in ("sw", "hw"):
            raise ValueError(f"quant-convert e2m1={self.e2m1!r}: must be 'sw' (any target) or 'hw' (sm_100a)")

    def apply(self, module: Module) -> Module:
        return module.replace_ops("cc.quant", self._convert)

    def _convert(self, op: Op) -> Op:
        return op.with_sched(convert=self.e2m1) if op.attr("codec") == "e2m1" else op
