"""rescale: how often the online softmax rescales its running sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module
from compressc.passes.base import ModulePass, require_thread_map

PER = ("batch", "row")


@dataclass(frozen=True, slots=True)
class Rescale(ModulePass):
    """Choose when the window's online softmax rescales (sum, weighted sum).

    A batch's rows are in registers together (rows-in-flight), so with `per=batch` the
    softmax takes the batch's max first and rescales once per batch: 1 + rows ex2 per
    channel instead of 2 per row. The ex2 unit is what one SM runs out of first on a C128
    row alone (128 x 512 x 2 ex2 at 16 a clock: 4.4 us). `per=row` updates row by row (the
    peer's order), which the smem-staged window needs: it reads its rows back one by one.

    Expects: thread-map has run; not a window already staged in smem (with per=batch).
    Leaves:  cc.window `rescale` ("batch" or "row"); nothing else changes.
    Options: per ("batch", default, or "row").
    """

    name: ClassVar[str] = "rescale"
    per: str = "batch"

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise ValueError(f"rescale per={self.per!r}: must be 'batch' or 'row'")

    def apply(self, module: Module) -> Module:
        require_thread_map(module, self.name)
        window = module.find("cc.window")
        if self.per == "batch" and window is not None and window.get("stage") == "smem":
            raise ValueError("rescale per=batch: the smem-staged window is read back and updated row by "
                             "row (use rescale{per=row} before smem-stage)")
        return module.replace_ops("cc.window", lambda op: op.with_sched(rescale=self.per))
