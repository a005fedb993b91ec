"""Lower a declarative KernelSpec to the spec-level IR (no schedule fields set)."""

from __future__ import annotations

import numpy as np

from compressc.ir.core import Module, Op, fields
from compressc.ir.online import online_ops
from compressc.ir.ring import ring_ops
from compressc.specs.abi import abi
from compressc.specs.family import KernelSpec, make_spec
from compressc.specs.formats import formats_for


def spec_attrs(spec: KernelSpec) -> tuple:
    """The module attributes that identify the variant; `spec_from_module` inverts them.
    A kernel's first cache format and rotate=false are left out (the packed kernels' IR
    reads as it always has)."""
    extra: dict = {}
    if spec.cache_format != _default_format(spec.kernel):
        extra["cache_format"] = spec.cache_format
    if spec.rotate:
        extra["rotate"] = True
    if spec.bounds:
        extra["bounds"] = True
    if spec.indexer:
        extra["indexer"] = spec.indexer
    return fields(
        kernel=spec.kernel,
        head=spec.head,
        rope=spec.rope,
        quant_block=spec.quant_block,
        ratio=spec.ratio,
        weight_dtype=spec.weight_dtype,
        **extra,
    ) + (() if spec.state_layout == "paged" else fields(state_layout=spec.state_layout))


def _default_format(kernel: str) -> str:
    return (formats_for(kernel) or [""])[0]


def spec_from_module(module: Module) -> KernelSpec:
    kernel = str(module.attr("kernel"))
    return make_spec(
        kernel,
        int(module.attr("head")),  # type: ignore[arg-type]
        int(module.attr("quant_block")),  # type: ignore[arg-type]
        rope=int(module.attr("rope")),  # type: ignore[arg-type]
        weight_dtype=str(module.attr("weight_dtype")),
        cache_format=str(module.attr("cache_format", _default_format(kernel))),
        rotate=bool(module.attr("rotate", False)),
        state_layout=str(module.attr("state_layout", "paged")),
        bounds=bool(module.attr("bounds", False)),
        indexer=str(module.attr("indexer", "")) or None,
    )


def _args(spec: KernelSpec) -> list[Op]:
    ops = []
    for p in abi(spec):
        attrs = fields(name=p.name, kind=p.kind, dtype=p.dtype, align=p.align) if p.kind == "ptr" \
            else fields(name=p.name, kind=p.kind)
        ops.append(Op("cc.arg", p.name, (), attrs))
    return ops


def _guard(spec: KernelSpec) -> Op:
    operands = ("token_to_req_indices", "positions", "slot_mapping", "kv_slot_mapping")
    return Op("cc.row_guard", "active", operands, fields(ratio=spec.ratio))


def bounds_checks(spec: KernelSpec) -> str:
    """The checks of a checked build (docs/kernels.md §3, "Checked builds"), by what the kernel indexes:
    request, column and page where it reads the paged state, rope and kv where it stores."""
    state = ("request", "column", "page") if spec.pools else ()
    checks = state + (("rope", "kv") if spec.normalises else ())
    return ",".join(checks)


def _bounds(spec: KernelSpec) -> list[Op]:
    """cc.bounds: the checked build's guard extension; the error record and the extents are
    the `bounds_*` kernel parameters (specs/abi.py)."""
    if not spec.bounds:
        return []
    return [Op("cc.bounds", "", ("active", "bounds_error"),
               fields(checks=bounds_checks(spec), window=spec.window if spec.pools else 0, ratio=spec.ratio))]


def _pool(spec: KernelSpec) -> list[Op]:
    pool = Op("cc.pool_softmax", "x", ("win",), fields(head=spec.head, order="ascending"))
    if spec.state_layout == "ring":
        return ring_ops(spec.ratio, spec.window, spec.head, spec.state_width) + [pool]
    window = Op(
        "cc.window",
        "win",
        ("state_cache", "block_table", "active"),
        fields(ratio=spec.ratio, window=spec.window, overlap=spec.overlap,
               head=spec.head, state_width=spec.state_width),
    )
    return [window, pool]


def _norm_rope(spec: KernelSpec, source: str) -> list[Op]:
    return [
        Op("cc.rms_norm", "y", (source, "rms_norm_weight", "rms_norm_eps"),
           fields(head=spec.head, weight_dtype=spec.weight_dtype)),
        Op("cc.rope", "yr", ("y", "cos_sin_cache", "positions"),
           fields(dims=spec.rope, first=spec.nope, pairing="gptj", position="ratio_floor",
                  ratio=spec.ratio)),
    ]


def _encode_store(spec: KernelSpec) -> list[Op]:
    """The generic lowering of a cache format: per region a cc.quant (when it has a scale)
    and a cc.store, the values bf16-rounded first (or Hadamard-rotated after that)."""
    fmt, store = spec.format, spec.store
    assert fmt is not None and store is not None
    ops, value = [], "yr"
    if spec.rotate:
        ops.append(Op("cc.hadamard", "h", ("yr",),
                      fields(size=spec.head, round="bf16", scale=float(np.float32(spec.head ** -0.5)))))
        value = "h"
    regions = fmt.layout(spec.head, spec.rope, spec.quant_block)
    for i, (region, lo, hi, offset, scale_offset) in enumerate(regions):
        source = value
        if region.scale is not None:
            ops.append(_quant(spec, region.codec, region.scale, (lo, hi), value, f"q{i}" if i else "q"))
            source = ops[-1].result
        pad = fmt.pad_scales if region.scale is not None and region.scale.stored != "none" else 0
        ops.append(Op("cc.store", "", (source, "k_cache", "kv_slot_mapping"),
                      fields(layout=fmt.name, codec=region.codec, channels=(lo, hi), offset=offset,
                             token_stride=store.token_stride, rows=fmt.row_stride,
                             scale_dim=store.scale_dim, scale_offset=scale_offset, pad=pad)))
    return ops


def _quant(spec: KernelSpec, codec: str, rule, channels: tuple[int, int], value: str, result: str) -> Op:
    lo, hi = channels
    scalar = spec.format.scale_operand if rule.kind == "tensor" else ""  # type: ignore[union-attr]
    operands = (value, scalar) if scalar else (value,)
    block = spec.quant_block if rule.kind == "block" else hi - lo
    return Op("cc.quant", result, operands,
              fields(codec=codec, scale=rule.kind, block=block, channels=channels,
                     bf16_first=not spec.rotate, scale_floor=rule.floor, qmax=rule.qmax,
                     floor_on=rule.floor_on, divide=rule.divide, stored=rule.stored))


def module_from_spec(spec: KernelSpec) -> Module:
    """The spec-level module of `spec`: arguments, guard, then the stages it runs."""
    if spec.kernel == "csa":  # two part modules in one (compressc.ir.fused)
        from compressc.ir.fused import fused_module

        return fused_module(spec)
    if spec.segmented:
        return Module(spec.variant, spec_attrs(spec), tuple(_args(spec) + online_ops(spec.head, spec.ratio)))
    ops = _args(spec) + [_guard(spec)] + _bounds(spec)
    if spec.kernel == "c128a_compress":
        ops += _pool(spec)
        ops.append(Op("cc.store_rows", "", ("x", "compressed_kv"), fields(head=spec.head)))
    elif spec.kernel == "c128a_store":
        ops.append(Op("cc.load_rows", "x", ("compressed_kv", "active"), fields(head=spec.head)))
        ops += _norm_rope(spec, "x") + _encode_store(spec)
    else:
        ops += _pool(spec) + _norm_rope(spec, "x") + _encode_store(spec)
    return Module(spec.variant, spec_attrs(spec), tuple(ops))
