"""Lower a declarative KernelSpec to the spec-level IR (no schedule fields set)."""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields
from compressc.ir.ring import ring_ops
from compressc.specs.abi import abi
from compressc.specs.family import KernelSpec, make_spec


def spec_attrs(spec: KernelSpec) -> tuple:
    """The module attributes that identify the variant; `spec_from_module` inverts them."""
    return fields(
        kernel=spec.kernel,
        head=spec.head,
        rope=spec.rope,
        quant_block=spec.quant_block,
        ratio=spec.ratio,
        weight_dtype=spec.weight_dtype,
    ) + (() if spec.state_layout == "paged" else fields(state_layout=spec.state_layout))


def spec_from_module(module: Module) -> KernelSpec:
    return make_spec(
        str(module.attr("kernel")),
        int(module.attr("head")),  # type: ignore[arg-type]
        int(module.attr("quant_block")),  # type: ignore[arg-type]
        rope=int(module.attr("rope")),  # type: ignore[arg-type]
        weight_dtype=str(module.attr("weight_dtype")),
        state_layout=str(module.attr("state_layout", "paged")),
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


def _norm_rope_quant_store(spec: KernelSpec, source: str) -> list[Op]:
    store = spec.store
    assert store is not None
    everything = spec.quant_format == "f32scale_e4m3"
    quant_channels = (0, spec.head) if everything else (0, spec.nope)
    return [
        Op("cc.rms_norm", "y", (source, "rms_norm_weight", "rms_norm_eps"),
           fields(head=spec.head, weight_dtype=spec.weight_dtype)),
        Op("cc.rope", "yr", ("y", "cos_sin_cache", "positions"),
           fields(dims=spec.rope, first=spec.nope, pairing="gptj", position="ratio_floor",
                  ratio=spec.ratio)),
        Op("cc.quant", "q", ("yr",),
           fields(format=spec.quant_format, block=spec.quant_block, channels=quant_channels,
                  bf16_first=True, scale_floor=spec.scale_floor, fp8_max=spec.fp8_max,
                  floor_on="amax" if everything else "scale")),
        Op("cc.store", "", ("q", "k_cache", "kv_slot_mapping"),
           fields(layout=store.name, token_stride=store.token_stride,
                  scale_dim=store.scale_dim, pad=store.pad_byte)),
    ]


def module_from_spec(spec: KernelSpec) -> Module:
    """The spec-level module of `spec`: arguments, guard, then the stages it runs."""
    ops = _args(spec) + [_guard(spec)]
    if spec.kernel == "c128a_compress":
        ops += _pool(spec)
        ops.append(Op("cc.store_rows", "", ("x", "compressed_kv"), fields(head=spec.head)))
    elif spec.kernel == "c128a_store":
        ops.append(Op("cc.load_rows", "x", ("compressed_kv", "active"), fields(head=spec.head)))
        ops += _norm_rope_quant_store(spec, "x")
    else:
        ops += _pool(spec) + _norm_rope_quant_store(spec, "x")
    return Module(spec.variant, spec_attrs(spec), tuple(ops))
