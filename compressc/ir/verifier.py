"""The verifier: structure, spec rules and (once set) schedule legality.

Every message names the op, the field, its value and the rule, prefixed by the
source location when the module was parsed from text.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.specs.errors import SpecError

WARP = 32
SMEM_LIMIT = 48 * 1024

# op name -> spec attributes it must carry
OP_ATTRS: dict[str, tuple[str, ...]] = {
    "cc.arg": ("name", "kind"),
    "cc.row_guard": ("ratio",),
    "cc.window": ("ratio", "window", "overlap", "head", "state_width"),
    "cc.pool_softmax": ("head", "order"),
    "cc.load_rows": ("head",),
    "cc.store_rows": ("head",),
    "cc.rms_norm": ("head", "weight_dtype"),
    "cc.rope": ("dims", "first", "pairing", "position", "ratio"),
    "cc.quant": ("format", "block", "channels", "bf16_first", "scale_floor", "fp8_max", "floor_on"),
    "cc.store": ("layout", "token_stride", "scale_dim", "pad"),
}
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
    _verify_structure(module)
    _verify_spec(module)
    _verify_schedule(module)
    return module


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


def _verify_spec(module: Module) -> None:
    from compressc.ir.from_spec import spec_from_module

    try:
        spec_from_module(module)
    except SpecError as err:
        raise _fail(module, None, err.field, err.value, err.rule) from None


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _verify_schedule(module: Module) -> None:
    elems = module.get("elems_per_lane")
    if elems is None:
        return
    _verify_thread_map(module, int(elems))  # type: ignore[arg-type]
    for op in module.ops:
        _verify_op_schedule(module, op, int(elems))  # type: ignore[arg-type]
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
    if threads % WARP or not 0 < threads <= 1024:
        raise _fail(module, None, "threads", threads,
                    "must be a whole number of warps, at most 1024 (pick more elems-per-lane)")
    if module.get("warps") != threads // WARP:
        raise _fail(module, None, "warps", module.get("warps"), f"must equal threads / 32 = {threads // WARP}")


def _verify_op_schedule(module: Module, op: Op, elems: int) -> None:
    bits = op.get("vector_bits")
    if bits is not None and (bits not in (8, 16, 32, 64, 128) or int(bits) > elems * 32):  # type: ignore[operator]
        raise _fail(module, op, "vector_bits", bits, f"must be 32, 64 or 128 and fit one lane's run ({elems * 32} bits)")
    if op.name == "cc.quant":
        _verify_quant(module, op, elems)
    if op.name == "cc.window":
        _verify_window(module, op)


def _verify_quant(module: Module, op: Op, elems: int) -> None:
    block = int(op.attr("block"))  # type: ignore[arg-type]
    lanes = op.get("lanes_per_group")
    if lanes is None:
        return
    if block % elems or lanes * elems != block or not _pow2(int(lanes)) or int(lanes) > WARP:  # type: ignore[operator]
        raise _fail(module, op, "lanes_per_group", lanes,
                    f"must be quant_block / elems_per_lane = {block}/{elems}, a power of two <= 32")
    tree = op.get("group_tree")
    if tree is not None and sorted(tree) != [1 << k for k in range(int(lanes).bit_length() - 1)]:  # type: ignore[arg-type]
        raise _fail(module, op, "group_tree", tree, f"must XOR exactly the masks 1..{int(lanes) // 2} of the group")


def _verify_window(module: Module, op: Op) -> None:
    split = int(module.get("window_split", 1))  # type: ignore[arg-type]
    window = int(op.attr("window"))  # type: ignore[arg-type]
    if window % split:
        raise _fail(module, None, "window_split", split, f"must divide the window of {window} rows")
    rows = op.get("rows_in_flight")
    if rows is not None and (int(rows) < 1 or (window // split) % int(rows)):  # type: ignore[arg-type]
        raise _fail(module, op, "rows_in_flight", rows,
                    f"must divide the {window // split} rows each split group pools")
