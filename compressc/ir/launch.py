"""The launch facts and the C ABI of a lowered module, derived in one place.

The ABI is read from the module's `cc.arg` ops (the verifier checks them against the
spec); the launch record from its schedule fields. The emitter, the compile driver, the
manifest and the interpreter all take them from here.
"""

from __future__ import annotations

from compressc.ir.core import Module
from compressc.ir.schedule import Schedule
from compressc.specs.abi import Param
from compressc.specs.launch import GridRule, LaunchInfo


def module_abi(module: Module) -> tuple[Param, ...]:
    """The kernel's parameters in declaration order, as its `cc.arg` ops give them."""
    params = []
    for op in module.iter("cc.arg"):
        kind = str(op.attr("kind"))
        if kind == "ptr":
            params.append(Param(str(op.attr("name")), kind, str(op.attr("dtype")), int(op.attr("align"))))  # type: ignore[arg-type]
        else:
            params.append(Param(str(op.attr("name")), kind))
    return tuple(params)


def entry_name(module: Module) -> str:
    # ptxas treats entries named cutlass_* as CuTe DSL's own (docs/architecture.md §3)
    return f"cutlass_{module.name}"


def grid_rule(module: Module) -> GridRule:
    """The module's grid: "rows", "runs:<rows per CTA>" or "wave:<CTAs per SM>[,cluster:S]"."""
    sched = Schedule.of(module)
    if sched.grid == "rows":
        return GridRule("rows")
    if sched.grid == "runs":
        return GridRule("runs", sched.rows_per_cta)
    if sched.global_split:  # c128a_split: the CTAs of a row are a plain launch's
        return GridRule("wave", sched.ctas_per_sm, split=sched.global_split)
    return GridRule("wave", sched.ctas_per_sm, sched.cluster)


def launch_info(module: Module) -> LaunchInfo:
    """The launch record of a lowered module (thread-map and the window passes have run)."""
    if module.attr("kernel") == "csa":  # a fused module (compressc.ir.fused)
        from compressc.ir.fused import fused_launch_info

        return fused_launch_info(module)
    sched = Schedule.of(module)
    return LaunchInfo(
        entry=entry_name(module),
        params=module_abi(module),
        block=(sched.threads, 1, 1),
        grid=grid_rule(module),
        smem_dynamic=sched.smem_dynamic,
        programmatic=sched.grid_dependency == "wait",
        min_ctas_per_sm=sched.min_ctas_per_sm,
    )
