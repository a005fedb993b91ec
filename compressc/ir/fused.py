"""A fused module: two part modules in one kernel (docs/kernels.md §12).

A `csa` module holds its kernel's parameters (`cc.arg`), then one body per part between
`cc.part` and `cc.part_end`: the part's spec attributes on the `cc.part` op (its schedule in
the op's `sched`), its own parameters as `cc.part_arg` ops naming the fused parameter each
receives (`binds`), and the part's row ops and kernel-dialect program exactly as the part
alone would have them. After the parts come the fused kernel's own `kd.*` ops: the dispatch
of each CTA to one part (`kd.part_index`, `kd.if_part`, `kd.call_part`).

`part_modules` cuts the parts out as ordinary modules (every pass, the verifier, the emitter
and the interpreter then work on them unchanged) and `with_parts` puts lowered parts back.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from compressc.ir.core import Module, Op, fields
from compressc.ir.kd import is_program_op
from compressc.ir.launch import entry_name, grid_rule, module_abi
from compressc.ir.schedule import Schedule
from compressc.specs.csa import PART_NAMES, bound_name, parts
from compressc.specs.family import KernelSpec
from compressc.specs.launch import LaunchInfo

PART, PART_END, PART_ARG = "cc.part", "cc.part_end", "cc.part_arg"
PART_ATTRS = {PART: ("part", "kernel"), PART_END: (), PART_ARG: ("name", "kind", "binds")}


def is_fused(module: Module) -> bool:
    return module.attr("kernel") == "csa"


def fused_module(spec: KernelSpec) -> Module:
    """The spec-level csa module: fused parameters, then each part's spec-level module."""
    from compressc.ir.from_spec import _args, module_from_spec, spec_attrs

    ops = _args(spec)
    for name, part_spec in zip(PART_NAMES, parts(spec), strict=True):
        ops.append(Op(PART, attrs=fields(part=name) + spec_attrs(part_spec)))
        ops += _part_body(name, module_from_spec(part_spec).ops)
        ops.append(Op(PART_END))
    return Module(spec.variant, spec_attrs(spec), tuple(ops))


def _part_body(name: str, ops: tuple[Op, ...]) -> list[Op]:
    """A part's ops with its `cc.arg`s as `cc.part_arg`s bound to the fused parameters."""
    return [
        Op(PART_ARG, op.result, (), op.attrs + fields(binds=bound_name(name, str(op.attr("name")))))
        if op.name == "cc.arg"
        else op
        for op in ops
    ]


def _spans(module: Module) -> list[tuple[int, int]]:
    """(index of cc.part, index of its cc.part_end) per part, in order."""
    spans, start = [], None
    for i, op in enumerate(module.ops):
        if op.name == PART:
            start = i
        elif op.name == PART_END and start is not None:
            spans.append((start, i))
            start = None
    return spans


def top_ops(module: Module) -> tuple[Op, ...]:
    """The fused module's own ops: its parameters and its dispatch program."""
    inside = {i for a, b in _spans(module) for i in range(a, b + 1)}
    return tuple(op for i, op in enumerate(module.ops) if i not in inside)


def part_ops(module: Module) -> list[Op]:
    """The `cc.part` op of each part, in order."""
    return [module.ops[a] for a, _ in _spans(module)]


@lru_cache(maxsize=64)
def _variant(attrs: tuple) -> str:
    from compressc.ir.from_spec import spec_from_module

    return spec_from_module(Module("", attrs)).variant


def part_modules(module: Module) -> tuple[Module, ...]:
    """Each part as the module it would be alone (its parameters as `cc.arg` ops)."""
    out = []
    for a, b in _spans(module):
        head = module.ops[a]
        attrs = tuple((k, v) for k, v in head.attrs if k != "part")
        body = tuple(
            Op("cc.arg", op.result, (), tuple((k, v) for k, v in op.attrs if k != "binds"), loc=op.loc)
            if op.name == PART_ARG
            else op
            for op in module.ops[a + 1 : b]
        )
        out.append(Module(_variant(attrs), attrs, body, head.sched))
    return tuple(out)


def with_parts(module: Module, new_parts: tuple[Module, ...]) -> Module:
    """`module` with each part's ops and schedule replaced by `new_parts`' (in order)."""
    spans = _spans(module)
    if len(spans) != len(new_parts):
        raise ValueError(f"module @{module.name} has {len(spans)} parts, {len(new_parts)} given")
    ops, last = [], 0
    for (a, b), name, part in zip(spans, PART_NAMES, new_parts, strict=True):
        ops += module.ops[last:a]
        ops.append(replace(module.ops[a], sched=part.sched))
        ops += _part_body(name, part.ops)
        ops.append(module.ops[b])
        last = b + 1
    return replace(module, ops=tuple(ops) + module.ops[last:])


def strip_program(module: Module) -> Module:
    """`module` without its own dispatch program (the parts keep theirs)."""
    top = {id(op) for op in top_ops(module) if is_program_op(op)}
    return replace(module, ops=tuple(op for op in module.ops if id(op) not in top), sched=())


def fused_launch_info(module: Module) -> LaunchInfo:
    """The fused kernel's launch: CTAs of the fused size, the main part's grid rule in x (any
    width is correct for both parts) and one row of CTAs per part in y."""
    main = part_modules(module)[0]
    sched = Schedule.of(main)
    rule = grid_rule(main)
    return LaunchInfo(
        entry=entry_name(module),
        params=module_abi(module),
        block=(int(module.get("threads")), 1, 1),  # type: ignore[arg-type]
        grid=replace(rule, parts=len(part_ops(module))),
        smem_dynamic=sched.smem_dynamic,
        programmatic=False,
        min_ctas_per_sm=sched.min_ctas_per_sm,
    )
