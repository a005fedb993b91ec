"""The verifier's rule for the row body's lane-level `kd.*` ops: they must be the ones
lower-row writes for the module's row ops and schedule (the pass has no options, so nothing
else is legal). An edited mask, slot or byte offset, or a coarse op edited without
re-lowering, is refused naming the op, the attribute and the value lower-row gives."""

from __future__ import annotations

from dataclasses import replace

from compressc.ir.core import Module, Op
from compressc.ir.kd_row import LOWERED, RowNestingError, is_row_op, row_program


def row_problem(module: Module) -> tuple[Op | None, str, object, str] | None:
    """(op, field, value, rule) of the first row op that differs from lower-row's, or None."""
    from compressc.passes.lower_row import LowerRow

    try:
        row_program(module.ops)
    except RowNestingError as err:
        return None, "row", "kd.if_cols", str(err)
    got = [op for op in module.ops if is_row_op(op)]
    if not got and module.find("kd.lanes") is None:
        return None  # not lowered yet
    bare = replace(module, ops=tuple(op for op in module.ops if not is_row_op(op)))
    try:
        lowered = LowerRow().apply(bare).ops
    except ValueError as err:  # row ops in a module whose schedule is not complete
        return None, "row", len(got), str(err)
    want, owners, owner = [], [], None
    for op in lowered:
        owner = op if op.name in LOWERED else owner
        if is_row_op(op):
            want.append(op)
            owners.append(owner)
    for op, expected, of in zip(got, want, owners, strict=False):
        if op.name != expected.name:
            return op, "name", op.name, f"must be {expected.name}: {_rule(of)}"
        for key, value in expected.attrs:
            if op.attr(key) != value:
                return op, key, op.attr(key), f"must be {value!r}: {_rule(of)}"
        if len(op.attrs) != len(expected.attrs):
            return op, "attrs", dict(op.attrs), f"must be {dict(expected.attrs)}: {_rule(of)}"
    if len(got) != len(want):
        return None, "row", len(got), f"must have the {len(want)} row kd ops lower-row writes (re-run it)"
    return None


def _rule(owner: Op | None) -> str:
    name = owner.name + (f" %{owner.result}" if owner is not None and owner.result else "") if owner else "?"
    return (f"the row's kd ops are lower-row's lowering of {name} and its schedule (re-run lower-row "
            "on the module without them)")
