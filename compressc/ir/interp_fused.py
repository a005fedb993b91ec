"""The interpreter of a fused kernel (docs/kernels.md §12): every part on the grid the
runtime launches.

The grid's x width comes from the fused launch rule (the main part's, `launch_grid` on a small
simulated GPU); each part then runs its own kernel-dialect program on every CTA of its row of
the grid (`interp_grid.run_program`), with its parameters taken from the fused arguments its
`cc.part_arg` ops are bound to. A part's row groups (`kd.row_groups`) loop over their rows as
the emitted kernel does; a row run twice or an active row never run is an error.
"""

from __future__ import annotations

from collections.abc import Mapping

from compressc.ir.core import Module
from compressc.ir.fused import fused_launch_info, part_modules
from compressc.ir.interp import Value, _guard, _memory, _schedule
from compressc.ir.interp_grid import run_program
from compressc.ir.launch import module_abi
from compressc.ir.verifier import VerifyError, verify
from compressc.specs.csa import PART_NAMES, bound_name
from compressc.specs.launch import launch_grid


def run_fused(
    module: Module, args: Mapping[str, Value], *, sm_count: int = 4, resident: int = 1
) -> dict[str, list[int]]:
    """Run one launch of the fused, lowered `module` with `args` by the fused ABI's names;
    the rows each part ran (its output arrays in `args` are written in place)."""
    verify(module)
    if module.find("kd.part_index") is None:
        raise VerifyError(f"module @{module.name}: the interpreter needs a fused module (run the pipeline)")
    grid = launch_grid(fused_launch_info(module).grid, int(args["num_rows"]), sm_count, resident)
    done = {}
    for name, part in zip(PART_NAMES, part_modules(module), strict=True):
        mem = _memory(part, {p.name: args[bound_name(name, p.name)] for p in module_abi(part)})
        sched, guard = _schedule(part), part.find("cc.row_guard")
        ratio = int(guard.attr("ratio"))  # type: ignore[union-attr, arg-type]
        done[name] = run_program(
            part, mem, grid,
            lambda row, op, p=part, s=sched, m=mem, r=ratio: _guard(p, s, m, row, r, op)
        )
    return done


def args_from_csa_scenario(scenario, main_cache, indexer_cache) -> dict[str, Value]:
    """The fused ABI arguments of a `compressc.scenarios_csa.CsaScenario` as NumPy, the two
    uint8 caches written in place."""
    from compressc.ir.interp import args_from_scenario

    out: dict[str, Value] = {}
    for name, s, cache in zip(PART_NAMES, scenario.scenarios, (main_cache, indexer_cache), strict=True):
        for key, value in args_from_scenario(s, cache).items():
            out[bound_name(name, key)] = value
    return out
