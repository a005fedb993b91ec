"""Emit a fused kernel (docs/kernels.md §12): one `@cute.jit` method per part, the kernel the
dispatch program.

Each part's method takes the part's own parameters (its ABI names) and its body is the
part's kernel-dialect program printed by the ordinary per-op emitters
(`compressc.kernels.grid.emit_program`); the kernel calls the method of its CTA's part with
the fused parameters each part parameter is bound to. Nothing of a part is written here.
"""

from __future__ import annotations

from dataclasses import replace

from compressc.ir.core import Module, Op
from compressc.ir.fused import PART_ARG, _spans, part_modules, top_ops
from compressc.ir.launch import launch_info, module_abi
from compressc.ir.schedule import Schedule
from compressc.kernels.source import Source
from compressc.specs.csa import PART_NAMES


def emit_fused(module: Module, pipeline: str) -> str:
    """The CuTe DSL source of a fused, lowered module (fuse-parts has run)."""
    from compressc.ir.kd import program
    from compressc.ir.verifier import VerifyError, verify
    from compressc.kernels.emitter import _annotation, _footer, _header, class_name
    from compressc.kernels.grid import _walk, emit_program

    if module.find("kd.part_index") is None:
        raise VerifyError(f"module @{module.name}: emit needs a fused module (run the default pipeline)")
    verify(module)
    launch = launch_info(module)
    src = Source()
    _header(src, module, pipeline, launch)
    typed = ", ".join(f"{p.name}: {_annotation(p.kind)}" for p in launch.params)
    src.line(f"class {class_name(module)}:")
    with src.indent():
        src.line(
            f'"""Fused CSA kernel: CTAs of {launch.threads} threads; grid row y runs part y '
            f'({", ".join(p.name for p in part_modules(module))})."""'
        )
        src.blank()
        src.line("@cute.jit")
        src.line(f"def __call__(self, {typed}):")
        with src.indent():
            _launch(src, launch)
        src.blank()
        src.line("@cute.kernel")
        src.line(f"def kernel(self, {typed}):")
        with src.indent():
            _walk(src, module, program(replace(module, ops=top_ops(module))))
        for name, part in zip(PART_NAMES, part_modules(module), strict=True):
            src.blank()
            src.line("@cute.jit")
            params = ", ".join(f"{p.name}: {_annotation(p.kind)}" for p in module_abi(part))
            src.line(f"def part_{name}(self, {params}):")
            with src.indent():
                src.line(f'"""{part.name}: {Schedule.of(part).threads} threads a row group."""')
                emit_program(src, part)
    _footer(src, module, launch.params)
    return src.text()


def _launch(src: Source, launch) -> None:
    names = ", ".join(p.name for p in launch.params)
    # .minnctapersm as the main part asks for it (emitter._launch: the carveout stays host-side)
    bounds = (
        f", min_blocks_per_mp={launch.min_ctas_per_sm}, preferred_smem_carveout=-1"
        if launch.min_ctas_per_sm
        else ""
    )
    block = ", ".join(map(str, launch.block))
    # the real grid is the runtime's (the main part's rule in x, one row per part in y)
    src.line(f"self.kernel({names}).launch(grid=[num_rows, {launch.grid.parts}, 1], block=[{block}]{bounds})")


def part_index(src: Source, module: Module, op: Op) -> None:
    src.line("# grid row y runs part y; in x each part sees the grid the main part's rule gives")
    src.line("_, part, _ = cute.arch.block_idx()")


def if_part(src: Source, module: Module, op: Op) -> None:
    src.line(f"if part == {op.attr('index')}:")
    src.depth += 1


def call_part(src: Source, module: Module, op: Op) -> None:
    """The part's method with the fused parameters its `cc.part_arg`s are bound to."""
    index = PART_NAMES.index(str(op.attr("part")))
    a, b = _spans(module)[index]
    binds = [str(o.attr("binds")) for o in module.ops[a + 1 : b] if o.name == PART_ARG]
    src.line(f"self.part_{op.attr('part')}({', '.join(binds)})")


def row_groups(src: Source, module: Module, op: Op) -> None:
    """A narrower part in the fused CTA: `groups` copies of its lanes, each owning launched rows
    cta + ctas * (group + groups * k), k = 0, 1, ...: at small T every CTA of the grid has a row
    (one group's), at large T a CTA's groups take rows a grid apart."""
    groups, lanes = int(op.attr("groups")), op.attr("head_lanes")  # type: ignore[arg-type]
    src.line(f"# {groups} row groups of {lanes} lanes: each runs its own launched rows, and")
    src.line("# nothing crosses a group (no shared memory, no CTA barrier in this part)")
    src.line(f"rgroup = tidx // {lanes}")
    src.line(f"hlane = tidx % {lanes}")
    src.line(f"col = hlane * {op.attr('elems')}  # first channel this lane owns")
    src.line("cta, _, _ = cute.arch.block_idx()")
    src.line("ctas, _, _ = cute.arch.grid_dim()")
    src.line(f"for rg_k in cutlass.range((num_rows + ctas * {groups} - 1) // (ctas * {groups}), unroll=1):")
    src.depth += 1
    src.line(f"row = cta + ctas * (rgroup + {groups} * rg_k)")
    src.line("if row < num_rows:")
    src.depth += 1
