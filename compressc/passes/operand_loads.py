"""operand-loads: when the epilogue's operands (RMS weight, cos/sin) are loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass

AT = ("early", "late")


@dataclass(frozen=True, slots=True)
class OperandLoads(ModulePass):
    """Place the loads of the RMS weight and the rope's cos/sin rows.

    The RMS weight depends on nothing and the rope's cos/sin only on the position, so with
    `at=early` their loads are issued right after the row's metadata, in the shadow of the
    window gather, instead of one more round trip after the RMS barrier (`at=late`: where
    they are used, the peer's order).

    Expects: nothing (spec-level ops).
    Leaves:  cc.rms_norm and cc.rope `load` ("early" or "late"); nothing else changes.
    Options: at ("early", default, or "late").
    """

    name: ClassVar[str] = "operand-loads"
    at: str = "early"

    def __post_init__(self) -> None:
        if self.at not in AT:
            raise ValueError(f"operand-loads at={self.at!r}: must be 'early' or 'late'")

    def apply(self, module: Module) -> Module:
        for name in ("cc.rms_norm", "cc.rope"):
            module = module.replace_ops(name, lambda op: op.with_sched(load=self.at))
        return module
