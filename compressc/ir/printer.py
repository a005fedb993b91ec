"""The one text syntax of the IR (`.cir`), printed deterministically.

    module @name {k = v, ...} {
      %r = cc.op(%a, %b) {k = v} sched {k = v}
    } sched {k = v}

Values: integers, floats (always with a `.` or exponent), `true`/`false`, quoted
strings and integer tuples `(1, 2)`. Unset schedule fields are simply absent.
"""

from __future__ import annotations

from compressc.ir.core import Attr, Fields, Module, Op


def format_value(value: Attr) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    raise TypeError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def format_fields(items: Fields) -> str:
    return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in items) + "}"


def format_op(op: Op) -> str:
    text = f"%{op.result} = {op.name}" if op.result else op.name
    if op.operands:
        text += "(" + ", ".join(f"%{o}" for o in op.operands) + ")"
    if op.attrs:
        text += " " + format_fields(op.attrs)
    if op.sched:
        text += " sched " + format_fields(op.sched)
    return text


def _indented(ops: tuple[Op, ...]) -> list[tuple[str, Op]]:
    """Each op with its indent: two spaces, and two more inside each kernel-dialect body
    (`kd.end` and `kd.else` sit at their opener's depth). The parser ignores indentation."""
    from compressc.ir.kd import OPENERS
    from compressc.ir.kd_row import ROW_CLOSERS, ROW_OPENERS

    out, depth = [], 1
    for op in ops:
        if op.name in ("kd.end", "kd.else", "cc.part_end") or op.name in ROW_CLOSERS:
            depth -= 1
        out.append(("  " * depth, op))
        # cc.part: a fused module's part; ROW_OPENERS: a store region or a window loop of the row body
        if op.name in OPENERS or op.name in ("kd.else", "cc.part") or op.name in ROW_OPENERS:
            depth += 1
    return out


def print_module(module: Module) -> str:
    head = f"module @{module.name}"
    if module.attrs:
        head += " " + format_fields(module.attrs)
    lines = [head + " {"]
    lines += [indent + format_op(op) for indent, op in _indented(module.ops)]
    tail = "}"
    if module.sched:
        tail += " sched " + format_fields(module.sched)
    lines.append(tail)
    return "\n".join(lines) + "\n"
