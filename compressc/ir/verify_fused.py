"""The verifier of a fused module (docs/kernels.md §12): its own structure, then each part.

The fused kernel's parameters must be its spec's (`compressc.specs.csa.csa_abi`), its parts
the spec's parts in order, each `cc.part_arg` bound to the fused parameter of its name and
kind; every part is verified as the module it is alone. Once fused (a dispatch program after
the parts), each part's program must be its lower-grid program as fuse-parts rewrites it
for the fused CTA, and the module's `threads` and `parts` the ones fuse-parts sets.
"""

from __future__ import annotations

from dataclasses import replace

from compressc.ir.core import Module, Op
from compressc.ir.fused import PART_ARG, PART_ATTRS, _spans, part_modules, part_ops, top_ops
from compressc.ir.kd import is_program_op
from compressc.ir.verifier import VerifyError, verify
from compressc.specs.csa import PART_NAMES, csa_abi, parts
from compressc.specs.errors import SpecError

_TOP = ("cc.arg", "kd.part_index", "kd.if_part", "kd.call_part", "kd.end")


def _fail(module: Module, op: Op | None, field: str, value: object, rule: str) -> VerifyError:
    where = f"module @{module.name}" if op is None else (f"{op.loc}: " if op.loc else "") + op.name
    return VerifyError(f"{where}: {field}={value!r}: {rule}")


def verify_fused(module: Module) -> Module:
    from compressc.ir.from_spec import spec_attrs, spec_from_module

    try:
        spec = spec_from_module(module)
    except SpecError as err:
        raise _fail(module, None, err.field, err.value, err.rule) from None
    _verify_top(module, spec)
    heads = part_ops(module)
    if [op.attr("part") for op in heads] != list(PART_NAMES):
        raise _fail(
            module,
            None,
            "parts",
            [op.attr("part") for op in heads],
            f"must be one cc.part ... cc.part_end body per part: {', '.join(PART_NAMES)}",
        )
    for head, part_spec in zip(heads, parts(spec), strict=True):
        want = (("part", head.attr("part")), *spec_attrs(part_spec))
        if head.attrs != want:
            raise _fail(
                module,
                head,
                "attrs",
                dict(head.attrs),
                f"must be {dict(want)}: the part of {spec.variant} is {part_spec.variant}",
            )
    _verify_bindings(module)
    _verify_parts(module)
    return module


def _verify_top(module: Module, spec) -> None:
    for op in top_ops(module):
        if op.name not in _TOP:
            rule = (
                "outside a cc.part body (or a body never closed with cc.part_end)"
                if op.name in PART_ATTRS
                else f"a fused module holds cc.arg, its parts and the dispatch ops {', '.join(_TOP[1:])}"
            )
            raise _fail(module, op, "name", op.name, rule)
    args = [
        (str(op.attr("name")), op.attr("kind"), op.attr("dtype", ""), op.attr("align", 0))
        for op in module.iter("cc.arg")
    ]
    want = [(p.name, p.kind, p.dtype, p.align) for p in csa_abi(spec)]
    if args != want:
        first = next(
            (i for i, (a, w) in enumerate(zip(args, want, strict=False)) if a != w), min(len(args), len(want))
        )
        raise _fail(
            module,
            None,
            "cc.arg",
            args[first] if first < len(args) else None,
            f"parameter {first} must be {want[first] if first < len(want) else 'absent'} "
            f"(the ABI of {spec.variant})",
        )


def _verify_bindings(module: Module) -> None:
    from compressc.specs.csa import bound_name

    fused = {str(op.attr("name")): op for op in module.iter("cc.arg")}
    for (a, b), name in zip(_spans(module), PART_NAMES, strict=True):
        for op in module.ops[a + 1 : b]:
            if op.name != PART_ARG:
                continue
            binds, want = op.attr("binds"), bound_name(name, str(op.attr("name")))
            target = fused.get(str(binds))
            if (
                binds != want
                or target is None
                or target.attr("kind") != op.attr("kind")
                or target.attr("dtype") != op.attr("dtype")
            ):
                raise _fail(
                    module,
                    op,
                    "binds",
                    binds,
                    f"must be the fused parameter {want!r} of the same kind and dtype",
                )


def _verify_parts(module: Module) -> None:
    from compressc.ir.verify_row import row_problem
    from compressc.passes.fuse_parts import dispatch_program, fusion_problem, part_program, row_groups
    from compressc.passes.lower_grid import expected_program

    lowered = part_modules(module)
    program = [op for op in top_ops(module) if op.name.startswith("kd.")]
    if not program:
        for part in lowered:
            verify(part)
        return
    bare = tuple(replace(p, ops=tuple(op for op in p.ops if not op.name.startswith("kd."))) for p in lowered)
    for part in bare:
        verify(part)
    groups = row_groups(bare)
    threads = max(int(p.get("threads")) for p in bare)  # type: ignore[arg-type]
    for part, kept, g in zip(bare, lowered, groups, strict=True):
        row = row_problem(kept)
        if row is not None:
            raise _fail(module, *row)
        problem = fusion_problem(part, g, threads)
        if problem:
            raise _fail(module, None, "part", part.name, problem)
        want = part_program(replace(part, ops=part.ops + expected_program(part)), g)
        got = tuple(op for op in kept.ops if is_program_op(op))
        if [(o.name, o.attrs) for o in got] != [(o.name, o.attrs) for o in want]:
            raise _fail(
                module,
                None,
                "program",
                part.name,
                "a part's kd ops must be its lower-grid program "
                "as fuse-parts rewrites it (re-run the pipeline)",
            )
    if [(o.name, o.attrs) for o in program] != [(o.name, o.attrs) for o in dispatch_program()]:
        raise _fail(module, program[0], "program", program[0].name, "must be fuse-parts' dispatch program")
    if module.get("threads") != threads or module.get("parts") != len(bare):
        raise _fail(
            module, None, "sched", dict(module.sched), f"must be threads = {threads}, parts = {len(bare)}"
        )
