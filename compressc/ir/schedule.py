"""The kernel-wide schedule of a lowered module as one typed record.

The passes write these fields into the module's `sched`; everything downstream (the
emitter, the kernel-dialect lowering, the launch record, the interpreter) reads them
through `Schedule.of` instead of parsing the attribute bag itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from compressc.ir.core import Module
from compressc.ir.verifier import VerifyError

# field -> the pass that sets it (a module without it was not lowered that far)
# (plan-smem's smem_bytes is 0 until it runs; the emitter insists on it being set)
REQUIRED = {"elems_per_lane": "thread-map", "head_lanes": "thread-map", "window_split": "thread-map",
            "threads": "thread-map"}


class UnloweredError(VerifyError):
    """The module lacks a schedule field: the message names it and the pass that sets it."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Schedule:
    """elems: channels per lane; head_lanes: lanes covering one head; split: lane groups
    pooling disjoint parts of the window; cluster: CTAs pooling one window together;
    grid: "rows", "runs" or "tiled" (with rows_per_cta, ctas_per_sm); smem_bytes/
    smem_dynamic: static and dynamic shared memory; grid_dependency: "wait", "trigger"
    or None; cache_hints: "stream" or None."""

    elems: int
    head_lanes: int
    split: int
    threads: int
    warps: int
    smem_bytes: int
    grid: str = "rows"
    rows_per_cta: int = 0
    ctas_per_sm: int = 0
    cluster: int = 1
    min_ctas_per_sm: int = 0
    smem_dynamic: int = 0
    grid_dependency: str | None = None
    cache_hints: str | None = None
    split_merge: str | None = None  # "global": the cluster's CTAs are a plain launch's (c128a_split)

    @property
    def global_split(self) -> int:
        """CTAs per row that merge through global memory (c128a_split), else 0."""
        return self.cluster if self.split_merge == "global" else 0

    @staticmethod
    def of(module: Module) -> Schedule:
        return _schedule(module.name, module.sched)


@lru_cache(maxsize=256)
def _schedule(name: str, sched: tuple) -> Schedule:
    fields = dict(sched)
    for key, owner in REQUIRED.items():
        if fields.get(key) is None:
            raise UnloweredError(f"module @{name}: {key} is unset: run the {owner} pass first "
                                 "(or the default pipeline)", key)

    def num(key: str, default: int = 0) -> int:
        return int(fields.get(key, default))

    threads = num("threads")
    return Schedule(
        elems=num("elems_per_lane"), head_lanes=num("head_lanes"), split=num("window_split"),
        threads=threads, warps=num("warps", threads // 32), smem_bytes=num("smem_bytes"),
        grid=str(fields.get("grid", "rows")), rows_per_cta=num("rows_per_cta"),
        ctas_per_sm=num("ctas_per_sm"), cluster=num("cluster_split", 1),
        min_ctas_per_sm=num("min_ctas_per_sm"), smem_dynamic=num("smem_dynamic"),
        grid_dependency=fields.get("grid_dependency"), cache_hints=fields.get("cache_hints"),
        split_merge=fields.get("split_merge"),
    )
