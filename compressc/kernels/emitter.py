"""Emit a CuTe DSL kernel module from a lowered (fully scheduled) IR module.

The emitter imports nothing from cutlass: it writes Python source text, so what it
produces can be read, diffed and tested on any machine. The module it writes obeys
the contract the compile driver relies on (`ENTRY`, `KERNEL`, `BLOCK`, `compile_args()`);
the rest of the launch record (`compressc.ir.launch.launch_info`) is the build's, not
read back from this source.
"""

from __future__ import annotations

import hashlib

from compressc import __version__
from compressc.ir.core import Module
from compressc.ir.from_spec import spec_from_module
from compressc.ir.launch import launch_info
from compressc.ir.printer import print_module
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.grid import emit_program
from compressc.kernels.source import Source
from compressc.passes.lower_grid import LowerGrid
from compressc.specs.launch import LaunchInfo

CUTE_TYPES = {"f32": "Float32", "bf16": "BFloat16", "i32": "Int32", "i64": "Int64", "u8": "Uint8"}
FAKE_SCALARS = {"i32": "Int32(1)", "i64": "Int64(1)", "f32": "Float32(1e-6)"}


def class_name(module: Module) -> str:
    return "".join(part.capitalize() for part in module.name.split("_"))


def spec_hash(module: Module) -> str:
    """Hash of the spec-level text (schedule and kernel-dialect program stripped): names what
    the kernel computes."""
    from dataclasses import replace

    ops = tuple(replace(op, sched=()) for op in module.ops if not op.name.startswith("kd."))
    bare = replace(module, sched=(), ops=ops)
    return hashlib.sha256(print_module(bare).encode()).hexdigest()[:16]


# Schedule fields the emitter reads, and the pass that sets each.
_OP_FIELDS = {
    "cc.window": (("vector_bits", "vectorize"), ("rows_in_flight", "rows-in-flight")),
    "cc.rms_norm": (("lane_tree", "lower-reduction"),),
    "cc.quant": (("group_tree", "lower-reduction"),),
    "cc.online_merge": (("vector_bits", "vectorize"), ("rows_in_flight", "rows-in-flight")),
}


def _require_lowered(module: Module) -> None:
    for key in ("threads", "elems_per_lane", "smem_bytes"):
        if module.get(key) is None:
            raise VerifyError(f"module @{module.name}: {key} is unset: emit needs a lowered module "
                              "(run the default pipeline first)")
    for op in module.ops:
        for key, owner in _OP_FIELDS.get(op.name, ()):
            if op.get(key) is None:
                raise VerifyError(f"module @{module.name}: {op.name} {key} is unset: emit needs the "
                                  f"{owner} pass in the pipeline (or -p default)")


def emit(module: Module, pipeline: str) -> str:
    """The CuTe DSL source of `module`, deterministic for a given module and pipeline.

    A scheduled module without its kernel-dialect program is lowered by lower-grid first
    (the build always runs it last; a .cir saved before it restarts here)."""
    if module.attr("kernel") == "csa":  # one method per part, the kernel their dispatch
        from compressc.kernels.fused import emit_fused

        return emit_fused(module, pipeline)
    _require_lowered(module)
    module = verify(LowerGrid().apply(module))
    spec = spec_from_module(module)
    launch = launch_info(module)
    params = launch.params
    typed = ", ".join(f"{p.name}: {_annotation(p.kind)}" for p in params)
    threads = launch.threads
    src = Source()
    _header(src, module, pipeline, launch)
    src.line(f"class {class_name(module)}:")
    with src.indent():
        src.line(f'"""{spec.kernel} kernel, head {spec.head}, quant block {spec.quant_block}: '
                 f'CTAs of {threads} threads; {_grid_doc(launch)}."""')
        src.blank()
        src.line("@cute.jit")
        src.line(f"def __call__(self, {typed}):")
        with src.indent():
            _launch(src, launch)
        src.blank()
        src.line("@cute.kernel")
        src.line(f"def kernel(self, {typed}):")
        with src.indent():
            emit_program(src, module)
    _footer(src, module, params)
    return src.text()


def _launch(src: Source, launch: LaunchInfo) -> None:
    names = ", ".join(p.name for p in launch.params)
    bounds = ""
    if launch.min_ctas_per_sm:
        # .minnctapersm: ptxas keeps registers low enough for this many CTAs per SM
        # (the carveout is a host-side launch attribute; the loader does not use it)
        bounds = f", min_blocks_per_mp={launch.min_ctas_per_sm}, preferred_smem_carveout=-1"
    if launch.grid.cluster > 1:
        # a launch attribute, not in the PTX: the runtime launches with the manifest's cluster
        bounds += f", cluster=[{launch.grid.cluster}, 1, 1]"
    block = ", ".join(map(str, launch.block))
    src.line(f"self.kernel({names}).launch(grid=[num_rows, 1, 1], block=[{block}]{bounds})")


_GRID_DOCS = {
    "rows": "one CTA per launched row",
    "runs": "each CTA takes a run of {count} launched rows, unrolled, and pools only the active ones",
    "wave": "at most {count} CTAs per SM, each looping over a run of launched rows and pooling only "
            "the active ones",
    "cluster": "clusters of {cluster} CTAs (at most {count} CTAs per SM), each looping over a run of "
               "launched rows and pooling 1/{cluster} of each active row's window",
    "split": "{split} CTAs per row group (a plain launch, at most {count} CTAs per SM), each looping over "
             "a run of launched rows and pooling 1/{split} of each active row's window; the last to "
             "arrive merges the partials and stores the row",
}


def _grid_doc(launch: LaunchInfo) -> str:
    grid = launch.grid
    doc = _GRID_DOCS["cluster" if grid.cluster > 1 else "split" if grid.split > 1 else grid.kind]
    return doc.format(count=grid.count, cluster=grid.cluster, split=grid.split)


def _annotation(kind: str) -> str:
    return "cute.Pointer" if kind == "ptr" else CUTE_TYPES[kind]


def _header(src: Source, module: Module, pipeline: str, launch: LaunchInfo) -> None:
    src.line(f"# Generated by compressc {__version__}; do not edit.")
    src.line(f"# variant:   {module.name}")
    src.line(f"# spec hash: {spec_hash(module)}")
    src.line(f"# pipeline:  {pipeline}")
    sched = ", ".join(f"{k}={v}" for k, v in module.sched)
    src.line(f"# schedule:  {sched}")
    src.line("import cutlass")
    src.line("import cutlass.cute as cute")
    src.line("from cutlass import BFloat16, Float32, Int32, Int64, Uint8, range_constexpr")
    src.blank()
    src.line("from compressc.kernels import cute_ops as ops")
    src.blank()
    # the launch record travels in the build plan and the manifest, not in this source
    src.line(f"# launch:    grid {launch.grid.spelling()}, dynamic smem {launch.smem_dynamic} B, "
             f"programmatic {str(launch.programmatic).lower()}")
    src.line(f'ENTRY = "{launch.entry}"')
    src.line(f"BLOCK = {launch.block}")
    src.line("LOG2E = 1.4426950408889634")
    src.blank()


def _footer(src: Source, module: Module, params: tuple) -> None:
    cls = class_name(module)
    src.blank()
    src.line(f"{cls}.kernel.set_name_prefix(ENTRY, remove_cutlass_symbol=True, keep_mangled_name=False)")
    src.line(f"KERNEL = {cls}()")
    src.blank()
    src.line("def compile_args():")
    with src.indent():
        src.line('"""Stand-in arguments: cute.compile only needs their types and alignment."""')
        src.line("gmem = cute.AddressSpace.gmem")
        src.line("return [")
        with src.indent():
            for p in params:
                if p.kind == "ptr":
                    src.line(f"cute.runtime.make_ptr({CUTE_TYPES[p.dtype]}, 0, gmem, "
                             f"assumed_align={p.align}),"
                             f"  # {p.name}")
                else:
                    src.line(f"{FAKE_SCALARS[p.kind]},  # {p.name}")
        src.line("]")
