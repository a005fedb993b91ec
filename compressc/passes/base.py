"""The pass interface and helpers shared by every pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module


@dataclass(frozen=True, slots=True)
class ModulePass:
    """A pure function Module -> Module with a kebab-case `name` and option fields."""

    name: ClassVar[str] = ""

    def apply(self, module: Module) -> Module:
        raise NotImplementedError

    def spelling(self) -> str:
        """The pipeline-string form of this pass with its non-default options."""
        opts = []
        for f in self.__dataclass_fields__.values():  # type: ignore[attr-defined]
            value = getattr(self, f.name)
            if value != f.default:
                opts.append(f"{f.name.replace('_', '-')}={_fmt(value)}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def require_thread_map(module: Module, pass_name: str) -> None:
    """Every pass after thread-map sizes its work by the lanes thread-map assigns; without
    them it would fill the schedule with zeros that the verifier (which checks a schedule
    only once a thread map is set) cannot see."""
    if module.get("elems_per_lane") is None:
        raise ValueError(
            f"{pass_name} needs the thread map: run thread-map first, e.g. -p 'thread-map,{pass_name}'"
        )


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def pool_rows_per_group(module: Module) -> int:
    """Window rows one split group of lanes pools (the whole window when unsplit): the
    window is cut into `cluster_split` parts, one per CTA of a cluster, and each part into
    `window_split` parts, one per lane group of the CTA."""
    window = module.find("cc.window")
    if window is None:
        return 0
    parts = int(module.get("window_split", 1)) * int(module.get("cluster_split", 1))  # type: ignore[arg-type]
    return int(window.attr("window")) // parts
