"""The pass interface and helpers shared by every pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compressc.ir.core import Module, Op
from compressc.ir.ring import is_ring


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


def window_after(module: Module, pass_name: str, field: str, owner: str) -> Op | None:
    """The module's cc.window (None: the kernel has none), with `field` already set by the
    pass `owner`: a pass that builds on another decision says which one is missing."""
    window = module.find("cc.window")
    if window is not None and window.get(field) is None:
        raise ValueError(f"{pass_name} needs the window's {field}: run {owner} first, "
                         f"e.g. -p '...,{owner},{pass_name}'")
    return window


def refuse_on_ring(module: Module, spelling: str, instead: str) -> None:
    """A ring window (docs/kernels.md §10) has one state block per request and no pages, so
    the paged-state paths (lane page lookups, the L2 page prefetch, the smem stage) do not apply."""
    if is_ring(module):
        raise ValueError(f"{spelling}: a ring window reads one state block per request, not pages "
                         f"({instead})")
