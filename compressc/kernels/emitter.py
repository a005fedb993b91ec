"""Emit a CuTe DSL kernel module from a lowered (fully scheduled) IR module.

The emitter imports nothing from cutlass: it writes Python source text, so what it
produces can be read, diffed and tested on any machine. The module it writes obeys
the contract the compile driver relies on (`ENTRY`, `KERNEL`, `BLOCK`, `GRID`,
`SMEM_DYNAMIC`, `PROGRAMMATIC`, `compile_args()`).
"""

from __future__ import annotations

import hashlib

from compressc import __version__
from compressc.ir.core import Module
from compressc.ir.from_spec import spec_from_module
from compressc.ir.printer import print_module
from compressc.ir.verifier import VerifyError
from compressc.kernels.source import Source
from compressc.kernels.stages import emit_body
from compressc.specs.abi import abi

CUTE_TYPES = {"f32": "Float32", "bf16": "BFloat16", "i32": "Int32", "i64": "Int64", "u8": "Uint8"}
FAKE_SCALARS = {"i32": "Int32(1)", "i64": "Int64(1)", "f32": "Float32(1e-6)"}


def entry_name(module: Module) -> str:
    return f"cutlass_{module.name}"


def class_name(module: Module) -> str:
    return "".join(part.capitalize() for part in module.name.split("_"))


def spec_hash(module: Module) -> str:
    """Hash of the spec-level text (schedule stripped): names what the kernel computes."""
    from dataclasses import replace

    bare = replace(module, sched=(), ops=tuple(replace(op, sched=()) for op in module.ops))
    return hashlib.sha256(print_module(bare).encode()).hexdigest()[:16]


# Schedule fields the emitter reads, and the pass that sets each.
_OP_FIELDS = {
    "cc.window": (("vector_bits", "vectorize"), ("rows_in_flight", "window-prefetch")),
    "cc.rms_norm": (("lane_tree", "lower-reduction"),),
    "cc.quant": (("group_tree", "lower-reduction"),),
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
    """The CuTe DSL source of `module`, deterministic for a given module and pipeline."""
    _require_lowered(module)
    spec = spec_from_module(module)
    params = abi(spec)
    names = ", ".join(p.name for p in params)
    typed = ", ".join(f"{p.name}: {_annotation(p.kind)}" for p in params)
    threads = int(module.get("threads"))  # type: ignore[arg-type]
    src = Source()
    _header(src, module, pipeline)
    src.line(f"class {class_name(module)}:")
    with src.indent():
        src.line(f'"""{spec.kernel} kernel, head {spec.head}, quant block {spec.quant_block}: '
                 f'CTAs of {threads} threads; {_grid_doc(module)}."""')
        src.blank()
        src.line("@cute.jit")
        src.line(f"def __call__(self, {typed}):")
        with src.indent():
            occupancy = int(module.get("min_ctas_per_sm", 0))  # type: ignore[arg-type]
            bounds = ""
            if occupancy:
                # .minnctapersm: ptxas keeps registers low enough for this many CTAs per SM
                # (the carveout is a host-side launch attribute; the loader does not use it)
                bounds = f", min_blocks_per_mp={occupancy}, preferred_smem_carveout=-1"
            cluster = int(module.get("cluster_split", 1))  # type: ignore[arg-type]
            if cluster > 1:
                # a launch attribute, not in the PTX: the runtime launches with the manifest's cluster
                bounds += f", cluster=[{cluster}, 1, 1]"
            src.line(f"self.kernel({names}).launch(grid=[num_rows, 1, 1], block=[{threads}, 1, 1]{bounds})")
        src.blank()
        src.line("@cute.kernel")
        src.line(f"def kernel(self, {typed}):")
        with src.indent():
            emit_body(src, module, spec)
    _footer(src, module, params)
    return src.text()


def grid_policy(module: Module) -> str:
    """The launch rule the runtime reads from the manifest: "rows", "wave:<ctas per SM>"
    (a tiled kernel), "wave:<ctas per SM>,cluster:<S>" (tiled, launched as clusters of S
    CTAs; a runtime that predates clusters refuses the rule instead of launching it
    without) or "runs:<rows per CTA>"."""
    if module.get("grid") == "rows":
        return "rows"
    if module.get("grid") == "runs":
        return f"runs:{module.get('rows_per_cta')}"
    cluster = int(module.get("cluster_split", 1))  # type: ignore[arg-type]
    return f"wave:{module.get('ctas_per_sm')}" + (f",cluster:{cluster}" if cluster > 1 else "")


def _grid_doc(module: Module) -> str:
    if module.get("grid") == "rows":
        return "one CTA per launched row"
    if module.get("grid") == "runs":
        return (f"each CTA takes a run of {module.get('rows_per_cta')} launched rows, unrolled, "
                "and pools only the active ones")
    cluster = int(module.get("cluster_split", 1))  # type: ignore[arg-type]
    if cluster > 1:
        return (f"clusters of {cluster} CTAs (at most {module.get('ctas_per_sm')} CTAs per SM), each "
                "looping over a run of launched rows and pooling 1/" f"{cluster} of each active row's window")
    return (f"at most {module.get('ctas_per_sm')} CTAs per SM, each looping over a run of "
            "launched rows and pooling only the active ones")


def _annotation(kind: str) -> str:
    return "cute.Pointer" if kind == "ptr" else CUTE_TYPES[kind]


def _header(src: Source, module: Module, pipeline: str) -> None:
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
    src.line(f'ENTRY = "{entry_name(module)}"')
    src.line(f"BLOCK = ({module.get('threads')}, 1, 1)")
    src.line(f'GRID = "{grid_policy(module)}"')
    src.line(f"SMEM_DYNAMIC = {int(module.get('smem_dynamic', 0))}")  # type: ignore[arg-type]
    # launched with programmatic stream serialization: it waits for the previous grid itself
    src.line(f"PROGRAMMATIC = {module.get('grid_dependency') == 'wait'}")
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
