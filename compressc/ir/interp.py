"""A NumPy interpreter of a lowered module: the emitted kernel's lanes, simulated explicitly.

`run_module` executes exactly what the CuTe DSL source of `compressc.kernels.emitter`
does, op by op, with one NumPy row per lane: the thread map (`lane_channels`), the
split-window online softmax and its shared-memory merge in group order (then, across a
cluster's CTAs, in rank order), the RMS
butterfly over `lane_tree` plus the per-warp partials, the amax butterfly over
`group_tree`, and every byte the store writes. Values are fp32 and each step is one
IEEE fp32 operation as on the GPU; ex2 and rsqrt are evaluated in fp32 by NumPy where
the kernel uses MUFU approximations (an ulp apart), so the interpreter's bytes may
differ from a kernel's only as docs/kernels.md §6 allows. A schedule bug (a lane owning the
wrong channels, a shuffle mask leaving its group, a merge out of order) therefore
shows up on a CPU, against `compressc.reference`.

Arguments use the ABI names of the module's `cc.arg` ops: pointers are NumPy
arrays addressed flat from their first element (C-contiguous), scalars are numbers.
`rms_norm_weight` is given as fp32 values (a bf16 weight converted exactly).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from compressc.ir.core import Module, Op
from compressc.ir.interp_bounds import bounds_failure, record
from compressc.ir.interp_grid import run_program
from compressc.ir.interp_stages import Lanes, Memory
from compressc.ir.launch import grid_rule, module_abi
from compressc.ir.schedule import Schedule, UnloweredError
from compressc.ir.verifier import VerifyError, verify
from compressc.specs.abi import abi, split_workspace_row
from compressc.specs.launch import launch_grid

Value = np.ndarray | int | float
_POINTER_DTYPES = {"f32": np.float32, "bf16": np.float32, "i32": np.int32, "i64": np.int64, "u8": np.uint8}


def _schedule(module: Module) -> Schedule:
    try:
        return Schedule.of(module)
    except UnloweredError as err:
        raise VerifyError(f"module @{module.name}: {err.key} is unset: the interpreter needs a lowered "
                          "module (run the default pipeline first)") from None


def lane_channels(module: Module) -> np.ndarray:
    """int [threads, elems_per_lane]: the head channels each thread owns.

    Thread `tid` is lane `hlane = tid % head_lanes` of split group `tid // head_lanes`;
    it owns channels [hlane * E, hlane * E + E) (the emitter's `col = hlane * E`).
    """
    s = _schedule(module)
    hlane = np.arange(s.threads) % s.head_lanes
    return hlane[:, None] * s.elems + np.arange(s.elems)


def _memory(module: Module, args: Mapping[str, Value]) -> Memory:
    mem = Memory()
    for p in module_abi(module):
        if p.name not in args:
            raise ValueError(f"argument {p.name!r} is missing (the {module.name} ABI needs it)")
        value = args[p.name]
        if p.kind != "ptr":
            mem.scalars[p.name] = value  # type: ignore[assignment]
            continue
        arr = np.asarray(value)
        if arr.dtype != _POINTER_DTYPES[p.dtype] or not arr.flags.c_contiguous:
            raise ValueError(
                f"argument {p.name!r} must be a C-contiguous {np.dtype(_POINTER_DTYPES[p.dtype])} "
                f"array, got {arr.dtype} (contiguous: {arr.flags.c_contiguous})"
            )
        mem.ptrs[p.name] = arr.reshape(-1)
    return mem


def run_module(module: Module, args: Mapping[str, Value], *, sm_count: int = 4,
               resident: int = 1) -> list[int]:
    """Run one launch of the lowered `module` on a simulated GPU of `sm_count` SMs holding
    `resident` CTAs each: the grid the runtime would launch (`launch_grid`), every CTA
    walking the kernel-dialect program. Returns the rows whose body ran, in order.

    Mutates the output array in `args` (k_cache, or compressed_kv for c128a_compress)
    exactly where the kernel stores; inactive rows write nothing. A small GPU (the
    default) gives each CTA long runs of rows, so the loops and ballots are exercised.
    """
    verify(module)
    sched = _schedule(module)
    if module.find("kd.lanes") is None:
        raise VerifyError(f"module @{module.name}: the interpreter needs the kernel dialect's row loop "
                          "(end the pipeline with lower-grid, as the build does)")
    mem = _memory(module, args)
    guard = module.find("cc.row_guard")
    assert guard is not None
    ratio, num_rows = int(guard.attr("ratio")), mem.scalar("num_rows")  # type: ignore[arg-type]
    grid = launch_grid(grid_rule(module), num_rows, sm_count, resident)
    return run_program(module, mem, grid,
                       lambda row, op: _guard(module, sched, mem, row, ratio, op))


def _guard(module: Module, sched: Schedule, mem: Memory, row: int, ratio: int,
           guard: Op | None = None) -> Lanes | None:
    """docs/kernels.md §3.1, as the emitted guard reads it: missing entries count as -1;
    `guard` (the kd op): the `checks` of a checked build's guard skip and record a bad row."""
    pos = int(mem["positions"][row]) if row < mem.scalar("num_positions") else -1
    kv_slot = int(mem["kv_slot_mapping"][row]) if row < mem.scalar("num_kv_slots") else -1
    slot, req = int(mem["slot_mapping"][row]), int(mem["token_to_req_indices"][row])
    if slot < 0 or req < 0 or pos < 0 or kv_slot < 0 or (pos + 1) % ratio:
        return None
    checked = guard is not None and guard.attr("checks")
    failure = bounds_failure(guard, mem, row, pos, req, kv_slot) if checked else None  # type: ignore[arg-type]
    if failure is not None:
        record(mem, row, failure)
        return None
    return Lanes(
        module, sched.elems, sched.head_lanes, sched.split, sched.threads, mem, row, pos, req, kv_slot,
    )


def args_from_scenario(scenario, out) -> dict[str, Value]:
    """The ABI arguments of `scenario` (CPU tensors) as NumPy, writing into `out`.

    `out` is the output tensor (a k_cache, or compressed_kv for c128a_compress); the
    returned arrays share its memory, so `run_module` fills it in place. Scalars are
    derived by the runtime's own argument checks (`compressc.runtime.validate`).
    """
    from compressc.runtime import validate

    if scenario.spec.state_layout == "ring":  # its own inputs (docs/kernels.md §10)
        from compressc.ir.interp_ring import args_from_ring_scenario

        return args_from_ring_scenario(scenario, out)
    import torch

    spec, s = scenario.spec, scenario
    compress = spec.kernel == "c128a_compress"
    cache = s.k_cache if compress else out
    values = validate.row_values(s.token_to_req_indices, s.positions, s.slot_mapping, s.kv_slot_mapping)
    if spec.normalises:
        values |= validate.store_values(
            spec, s.rms_norm_weight, s.rms_norm_eps, s.cos_sin_cache, cache, s.kv_cache_block_size,
            s.fp8_scale,
        )
    if spec.pools:
        values |= validate.state_values(spec, s.state_cache, s.block_table, s.block_size)
    tensors = {
        "state_cache": s.state_cache,
        "token_to_req_indices": s.token_to_req_indices,
        "positions": s.positions,
        "slot_mapping": s.slot_mapping,
        "block_table": s.block_table,
        "rms_norm_weight": s.rms_norm_weight.float(),
        "cos_sin_cache": s.cos_sin_cache,
        "k_cache": cache,
        "kv_slot_mapping": s.kv_slot_mapping,
        "compressed_kv": out if compress else s.compressed_kv,
        "fp8_scale": s.fp8_scale,
    }
    if spec.kernel == "c128a_split":  # zeroed as the runtime's (ir/interp_split.py)
        tensors["split_workspace"] = torch.zeros(s.T * split_workspace_row(spec.head), dtype=torch.float32)
    if spec.bounds:  # a checked build: a fresh error record and the extents of these tensors
        from compressc.runtime.bounds_kernel import extents

        values |= extents(tensors)
        tensors["bounds_error"] = torch.zeros(8, dtype=torch.int64)
    args: dict[str, Value] = {}
    for p in abi(spec):
        if p.kind == "ptr":
            args[p.name] = _storage(tensors[p.name]).numpy()
        else:
            args[p.name] = values[p.name]
    return args


def _storage(t):
    """A flat view of `t`'s storage from its first element on (page padding included)."""
    import torch

    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn):
        t = t.view(torch.uint8)  # a full cache: the kernel addresses its bytes
    extent = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    return t.as_strided((extent,), (1,))
