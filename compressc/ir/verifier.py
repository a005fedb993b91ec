"""The verifier: structure, spec rules and (once set) schedule legality.

Every message names the op, the field, its value and the rule, prefixed by the
source location when the module was parsed from text.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.kd import KD_ATTRS, NestingError, kd_ops, program
from compressc.ir.kd_row import ROW_ATTRS
from compressc.ir.online import ONLINE_ATTRS, online_problem
from compressc.ir.ring import RING_ATTRS, RING_OP, verify_ring
from compressc.ir.verify_reductions import verify_hadamard, verify_quant, verify_rms
from compressc.ir.verify_window import verify_window
from compressc.specs.abi import CLUSTER_SIZES
from compressc.specs.errors import SpecError
from compressc.specs.target import DEFAULT_TARGET, WARP

SMEM_LIMIT = DEFAULT_TARGET.static_smem  # without the opt-in attribute

# op name -> spec attributes it must carry
OP_ATTRS: dict[str, tuple[str, ...]] = {
    "cc.arg": ("name", "kind"),
    "cc.row_guard": ("ratio",),
    "cc.bounds": ("checks", "window", "ratio"),
    "cc.window": ("ratio", "window", "overlap", "head", "state_width"),
    "cc.pool_softmax": ("head", "order"),
    "cc.load_rows": ("head",),
    "cc.store_rows": ("head",),
    "cc.rms_norm": ("head", "weight_dtype"),
    "cc.rope": ("dims", "first", "pairing", "position", "ratio"),
    "cc.hadamard": ("size", "round", "scale"),
    "cc.quant": ("codec", "scale", "block", "channels", "bf16_first", "scale_floor", "qmax", "floor_on",
                 "divide", "stored"),
    "cc.store": ("layout", "codec", "channels", "offset", "token_stride", "rows", "scale_dim",
                 "scale_offset", "pad"),
}
OP_ATTRS[RING_OP] = RING_ATTRS
OP_ATTRS.update(KD_ATTRS)
OP_ATTRS.update(ROW_ATTRS)
OP_ATTRS.update(ONLINE_ATTRS)
MODULE_ATTRS = ("kernel", "head", "rope", "quant_block", "ratio", "weight_dtype")


class VerifyError(ValueError):
    """The module is malformed or its schedule is illegal."""


def _where(module: Module, op: Op | None) -> str:
    if op is None:
        return f"module @{module.name}"
    prefix = f"{op.loc}: " if op.loc else ""
    return f"{prefix}{op.name}" + (f" %{op.result}" if op.result else "")


def _fail(module: Module, op: Op | None, field: str, value: object, rule: str) -> VerifyError:
    return VerifyError(f"{_where(module, op)}: {field}={value!r}: {rule}")


def verify(module: Module) -> Module:
    """Return `module` unchanged if it is legal; raise VerifyError otherwise."""
    if module.attr("kernel") == "csa":  # a fused module: its parts are verified as modules
        from compressc.ir.verify_fused import verify_fused

        return verify_fused(module)
    _verify_structure(module)
    _verify_spec(module)
    _verify_schedule(module)
    _verify_program(module)  # last: the schedule it is checked against must be legal first
    _verify_row(module)
    return module


def _verify_row(module: Module) -> None:
    from compressc.ir.verify_row import row_problem

    problem = row_problem(module)
    if problem is not None:
        raise _fail(module, *problem)


def _verify_structure(module: Module) -> None:
    for key in MODULE_ATTRS:
        if module.attr(key) is None:
            raise _fail(module, None, key, None, "missing module attribute")
    defined: set[str] = set()
    for op in module.ops:
        if op.name not in OP_ATTRS:
            raise _fail(module, op, "name", op.name, f"unknown op; known: {', '.join(OP_ATTRS)}")
        for key in OP_ATTRS[op.name]:
            if op.attr(key) is None:
                raise _fail(module, op, key, None, "missing attribute")
        for operand in op.operands:
            if operand not in defined:
                raise _fail(module, op, "operand", f"%{operand}", "used before it is defined")
        if op.result in defined:
            raise _fail(module, op, "result", f"%{op.result}", "defined twice")
        if op.result:
            defined.add(op.result)
    try:
        program(module)
    except NestingError as err:
        raise VerifyError(str(err)) from None


def _verify_program(module: Module) -> None:
    """A kernel-dialect program must be the one lower-grid writes for the rest of the module:
    an edited, stale or early program would not match the schedule it runs."""
    ops = kd_ops(module)
    if not ops:
        return
    from compressc.passes.lower_grid import expected_program

    try:
        want = expected_program(module)
    except ValueError as err:
        raise VerifyError(f"module @{module.name}: a kd program on an unfinished schedule: {err}") from None
    for op, expected in zip(ops, want, strict=False):
        if (op.name, op.attrs) != (expected.name, expected.attrs):
            raise _fail(module, op, "program", op.name,
                        f"must be {expected.name} {dict(expected.attrs)}: the kd ops are lower-grid's "
                        "lowering of the module's schedule (re-run it on the module without them)")
    if len(ops) != len(want):
        raise _fail(module, None, "program", len(ops), f"must have the {len(want)} kd ops lower-grid writes")


def _verify_spec(module: Module) -> None:
    from compressc.ir.from_spec import spec_from_module

    try:
        spec = spec_from_module(module)
    except SpecError as err:
        raise _fail(module, None, err.field, err.value, err.rule) from None
    _verify_args(module, spec)
    _verify_ops_match_spec(module, spec)
    _verify_bounds(module, spec)
    verify_ring(module, _fail)


def _verify_ops_match_spec(module: Module, spec) -> None:
    """Every spec op's attributes are the ones the module's attributes imply.

    The module attributes name the variant (and so the cache key and the kernel's
    ABI); an op that says otherwise (say `head = 511` in cc.window of a head-512
    module) would compile a kernel that is not the variant it claims to be. Ops the
    spec does not make (those passes add) and attributes it does not set are left to
    the rules that own them.
    """
    from compressc.ir.from_spec import module_from_spec

    def keyed(ops) -> dict:  # the i-th op of each (name, result): a format has several cc.store
        seen: dict = {}
        for op in ops:
            seen.setdefault((op.name, op.result), []).append(op)
        return {(*key, i): op for key, group in seen.items() for i, op in enumerate(group)}

    expected = keyed(module_from_spec(spec).ops)
    for key, op in keyed(module.ops).items():
        want = expected.get(key)
        for key, value in want.attrs if want is not None else ():
            got = op.attr(key)
            if got is not None and got != value:
                raise _fail(module, op, key, got,
                            f"contradicts the module attributes, which imply {key}={value!r}")


def _verify_bounds(module: Module, spec) -> None:
    """A checked build (module attribute bounds=true) has one cc.bounds, right after its guard;
    any other has none: the op changes the ABI and which rows run."""
    ops = [i for i, op in enumerate(module.ops) if op.name == "cc.bounds"]
    want = 1 if spec.bounds else 0
    if len(ops) != want:
        rule = ("a checked build (bounds = true) needs one" if want
                else "needs the module attribute bounds = true")
        raise _fail(module, module.ops[ops[1]] if len(ops) > 1 else (module.ops[ops[0]] if ops else None),
                    "cc.bounds", len(ops), rule)
    if ops and module.ops[ops[0] - 1].name != "cc.row_guard":
        raise _fail(module, module.ops[ops[0]], "position", ops[0],
                    "must follow cc.row_guard (it extends the guard)")


def _verify_args(module: Module, spec) -> None:
    """The `cc.arg` ops are the kernel's C ABI (the emitter and the manifest read them): they
    must declare exactly the parameters the spec's kernel takes, in order."""
    from compressc.ir.launch import module_abi
    from compressc.specs.abi import abi

    want, args = abi(spec), list(module.iter("cc.arg"))
    for i, (op, param) in enumerate(zip(module_abi(module), want, strict=False)):
        for field in ("name", "kind", "dtype", "align"):
            got, need = getattr(op, field), getattr(param, field)
            if got != need:
                raise _fail(module, args[i], field, got,
                            f"must be {need!r}: parameter {i} of the {spec.kernel} ABI is {_spell(param)}")
    if len(args) != len(want):
        names = ", ".join(p.name for p in want)
        raise _fail(module, None, "cc.arg", len(args), f"must declare the {len(want)} parameters {names}")


def _spell(param) -> str:
    if param.kind != "ptr":
        return f"{param.kind} {param.name}"
    return f"{param.name}: {param.dtype}* aligned to {param.align} bytes"


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _verify_schedule(module: Module) -> None:
    elems = module.get("elems_per_lane")
    if elems is None:
        return
    _verify_thread_map(module, int(elems))  # type: ignore[arg-type]
    for op in module.ops:
        _verify_op_schedule(module, op, int(elems))  # type: ignore[arg-type]
    problem = online_problem(module)
    if problem is not None:
        raise _fail(module, *problem)
    smem = int(module.get("smem_bytes", 0))  # type: ignore[arg-type]
    if smem > SMEM_LIMIT:
        raise _fail(module, None, "smem_bytes", smem, f"must be at most {SMEM_LIMIT} (static shared memory)")


def _verify_thread_map(module: Module, elems: int) -> None:
    head, rope = int(module.attr("head")), int(module.attr("rope"))  # type: ignore[arg-type]
    threads = int(module.get("threads", 0))  # type: ignore[arg-type]
    if not _pow2(elems) or head % elems:
        raise _fail(module, None, "elems_per_lane", elems, f"must be a power of two dividing head={head}")
    if (head - rope) % elems:
        raise _fail(module, None, "elems_per_lane", elems,
                    f"must divide the nope width {head - rope} so no lane straddles nope and rope")
    if threads % WARP or not 0 < threads <= DEFAULT_TARGET.max_threads:
        hint = " (pick more elems-per-lane)" if threads > DEFAULT_TARGET.max_threads else ""
        hint = " (pick fewer elems-per-lane)" if threads < WARP else hint
        raise _fail(module, None, "threads", threads, "must be a whole number of warps, at most 1024" + hint)
    if module.get("warps") != threads // WARP:
        raise _fail(module, None, "warps", module.get("warps"),
                    f"must equal threads / 32 = {threads // WARP}")
    _verify_lanes(module, elems, threads)
    _verify_grid(module)


def _verify_grid(module: Module) -> None:
    grid, per_sm = module.get("grid"), module.get("ctas_per_sm")
    if grid is not None and grid not in ("rows", "tiled", "runs"):
        raise _fail(module, None, "grid", grid,
                    "must be 'rows' (one CTA per launched row), 'tiled' or 'runs'")
    run = module.get("rows_per_cta")
    if grid == "runs" and not (isinstance(run, int) and 1 <= run <= 32):
        raise _fail(module, None, "rows_per_cta", run,
                    "must be 1..32 for a 'runs' grid (one warp ballot decides the run's active rows)")
    if grid == "tiled" and not (isinstance(per_sm, int) and 1 <= per_sm <= 32):
        raise _fail(module, None, "ctas_per_sm", per_sm,
                    "must be 1..32 for a tiled grid (Hopper holds at most 32 CTAs per SM)")
    cluster = module.get("cluster_split", 1)
    if cluster not in CLUSTER_SIZES:
        raise _fail(module, None, "cluster_split", cluster, "must be 1, 2, 4 or 8 (CTAs per cluster)")
    if cluster != 1 and grid != "tiled":
        raise _fail(module, None, "cluster_split", cluster,
                    f"needs the tiled grid (a cluster shares its rows), have {grid!r}")
    if cluster != 1 and module.find("cc.window") is None:
        raise _fail(module, None, "cluster_split", cluster, "must be 1: this kernel has no window to split")
    _verify_split_merge(module, cluster)
    dependency = module.get("grid_dependency")
    if dependency not in (None, "wait", "trigger"):
        raise _fail(module, None, "grid_dependency", dependency,
                    "must be 'wait' (loads the previous grid's rows) or 'trigger' (writes rows)")
    needs = {"wait": "cc.load_rows", "trigger": "cc.store_rows"}.get(dependency)  # type: ignore[arg-type]
    if needs is not None and module.find(needs) is None:
        raise _fail(module, None, "grid_dependency", dependency, f"needs a kernel with {needs}")
    hints = module.get("cache_hints")
    if hints not in (None, "stream"):
        raise _fail(module, None, "cache_hints", hints,
                    "must be 'stream' (read-once window loads, kept cache stores) or unset")
    occupancy = module.get("min_ctas_per_sm")
    threads = int(module.get("threads", 0))  # type: ignore[arg-type]
    sm_threads = DEFAULT_TARGET.sm_threads
    if occupancy is not None and not (isinstance(occupancy, int) and 1 <= occupancy * threads <= sm_threads):
        raise _fail(module, None, "min_ctas_per_sm", occupancy,
                    f"must keep min_ctas_per_sm * threads ({threads}) within the SM's {sm_threads} threads")


def _verify_split_merge(module: Module, cluster: object) -> None:
    """c128a_split's CTAs merge through global memory (split_merge='global', docs/kernels.md §13)
    or, as every kernel's cluster (split_merge unset), over DSMEM."""
    merge, kernel = module.get("split_merge"), module.attr("kernel")
    if merge not in (None, "global"):
        raise _fail(module, None, "split_merge", merge,
                    "must be 'global' (c128a_split's workspace merge) or unset")
    if merge == "global" and kernel != "c128a_split":
        raise _fail(module, None, "split_merge", merge,
                    f"is c128a_split's (its stores follow the merge), not {kernel}'s: use a cluster")
    if merge == "global" and cluster == 1:
        raise _fail(module, None, "split_merge", merge, "needs cluster_split > 1 (the CTAs of a row)")


def _verify_lanes(module: Module, elems: int, threads: int) -> None:
    """The fields the emitted prologue lays lanes out by must agree with each other."""
    head_lanes, head = module.get("head_lanes"), int(module.attr("head"))  # type: ignore[arg-type]
    split = int(module.get("window_split", 1))  # type: ignore[arg-type]
    if head_lanes != head // elems:
        raise _fail(module, None, "head_lanes", head_lanes,
                    f"must equal head / elems_per_lane = {head // elems}")
    if threads != head_lanes * split:
        raise _fail(module, None, "threads", threads,
                    f"must equal head_lanes * window_split = {head_lanes * split}")
    if split != 1 and module.find("cc.window") is None:
        raise _fail(module, None, "window_split", split, "must be 1: this kernel has no window to split")
    if split > 1 and head_lanes % WARP:
        # After the merge only group 0 runs: its shuffles (full-warp masks) and its named
        # barrier need whole warps, which a group sharing a warp with group 1 is not.
        raise _fail(module, None, "head_lanes", head_lanes,
                    "must be a whole number of warps when the window is split (pick fewer elems-per-lane)")
    if elems % 2 and module.find("cc.rope") is not None:
        raise _fail(module, None, "elems_per_lane", elems,
                    "must be even: a lane rotates whole GPT-J pairs and packs fp8 codes in pairs")


def _run_bits(op: Op, elems: int) -> int:
    """Bits of one lane's contiguous run that `vector_bits` splits into accesses."""
    if op.name == "cc.rope":
        return elems * 16  # elems / 2 fp32 cos (and sin) values
    if op.name == "cc.rms_norm" and op.attr("weight_dtype") == "bf16":
        return elems * 16
    return elems * 32


def _masks(lanes: int) -> list[int]:
    return [1 << k for k in range(lanes.bit_length() - 1)]


def _verify_op_schedule(module: Module, op: Op, elems: int) -> None:
    bits, run = op.get("vector_bits"), _run_bits(op, elems)
    if bits is not None and (bits not in (32, 64, 128) or int(bits) > run):  # type: ignore[operator]
        raise _fail(module, op, "vector_bits", bits,
                    f"must be 32, 64 or 128 and fit one lane's run ({run} bits)")
    if op.name == "cc.quant":
        verify_quant(module, op, elems)
    if op.name == "cc.hadamard":
        verify_hadamard(module, op, elems)
    if op.name == "cc.window":
        verify_window(module, op, _fail)
    if op.name == "cc.rms_norm":
        verify_rms(module, op)
    if op.get("load") not in (None, "early", "late"):
        raise _fail(module, op, "load", op.get("load"),
                    "must be 'early' (issued with the row's metadata) or 'late' (where used)")
    if op.name == "cc.pool_softmax":
        split, cluster = int(module.get("window_split", 1)), module.get("cluster_split", 1)  # type: ignore[arg-type]
        want = "smem" if split > 1 or cluster != 1 else "none"
        if op.get("merge") not in (None, want):
            clustered = f", cluster_split={cluster}" if cluster != 1 else ""
            raise _fail(module, op, "merge", op.get("merge"),
                        f"must be {want!r} for window_split={split}{clustered}")
    exchanges = op.get("cross_warp") == "smem" or op.get("merge") == "smem"
    if exchanges and module.get("smem_bytes") is not None and op.get("smem_offset") is None:
        raise _fail(module, op, "smem_offset", None, "must be set for an exchange through smem "
                    "(run plan-smem after lower-reduction)")


