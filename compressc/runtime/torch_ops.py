"""The compressor ops as torch.library custom ops: `torch.ops.compressc.*`.

    from compressc.runtime import torch_ops
    torch_ops.register()          # once; later calls return the same ops
    torch.ops.compressc.compress_c4a(state_cache, ..., k_cache, kv_slot_mapping, B)

Each op declares what it writes (`mutates_args`: k_cache, and C128A's compressed_kv when
given) and returns nothing, so torch.compile (fullgraph) keeps the call in its graph and
orders it against the cache's readers; the fake impl does nothing (no output to shape).
CUDA tensors run the compressc kernels (`compressc.runtime.ops`, after the same checks);
CPU tensors run the torch reference (`compressc.reference`), which writes the same bytes
as docs/kernels.md §6 allows the kernels to: a slow but exact implementation, which also lets
`torch.library.opcheck` run the op for real on a machine without a GPU.

Eager callers on a hot path should call `compressc.runtime.ops` directly: a custom op adds
torch's dispatcher (several microseconds) to every call.

The ops are defined with `torch.library.Library` rather than `torch.library.custom_op`: the
dispatcher drops trailing arguments equal to their defaults before calling a Python kernel, and
custom_op's version-bump kernel of torch <= 2.11 indexes the mutated arguments by position
(`args[14]`, C128A's `compressed_kv`), an IndexError whenever compressed_kv is left None. Our
ADInplaceOrView kernel (`_bump_versions`) reads a dropped argument as its default instead.
"""

from __future__ import annotations

import torch

from compressc import reference
from compressc.runtime import ops
from compressc.runtime.validate import compressed_values, weight_dtype_name

NAMESPACE = "compressc"
_registered: dict[str, object] = {}
_libraries: list[torch.library.Library] = []  # a Library's registrations live as long as it does


def register() -> dict[str, object]:
    """Define torch.ops.compressc.{compress_c4a, compress_indexer_fp8, compress_indexer_mxfp4,
    compress_c128a} (once)."""
    if not _registered:
        _registered.update(_define())
    return dict(_registered)


def _define() -> dict[str, object]:
    lib_ops = {}
    for name, head, block in (("compress_c4a", 512, 64), ("compress_indexer_fp8", 128, 128),
                              ("compress_indexer_mxfp4", 128, 32)):
        lib_ops[name] = _fused_op(name, head, block)
    lib_ops["compress_c128a"] = _c128a_op()
    return lib_ops


def _fused_op(name: str, head: int, block: int):
    kernel = name.removeprefix("compress_")
    run_cuda = getattr(ops, name)
    main = kernel == "c4a"

    def impl(state_cache: torch.Tensor, token_to_req_indices: torch.Tensor, positions: torch.Tensor,
             slot_mapping: torch.Tensor, block_table: torch.Tensor, block_size: int,
             rms_norm_weight: torch.Tensor, rms_norm_eps: float, cos_sin_cache: torch.Tensor,
             k_cache: torch.Tensor, kv_slot_mapping: torch.Tensor, kv_cache_block_size: int,
             head_size: int = head, quant_block: int = block, cache_format: str = "",
             rotate: bool = False, fp8_scale: torch.Tensor | None = None) -> None:
        args = (state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
                rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size)
        fmt = cache_format or ("fp8_ds_mla" if main else kernel)
        extra = {"cache_format": fmt, "fp8_scale": fp8_scale} if main else {"rotate": rotate}
        if k_cache.device.type == "cuda":
            run_cuda(*args, head_size=head_size, quant_block=quant_block, **extra)
            return
        weight = weight_dtype_name(rms_norm_weight)
        spec = ops.kernel_spec(kernel, head_size, quant_block, weight, fmt, rotate)
        ops._common_values(spec, ops._named(*args, fp8_scale=fp8_scale), spec)  # the CUDA path's checks
        reference.compress_fused(spec, *args[:9], k_cache.view(torch.uint8), *args[10:], fp8_scale=fp8_scale)

    return define_op(name, impl, ("k_cache",))


def _c128a_op():
    def compress_c128a(state_cache: torch.Tensor, token_to_req_indices: torch.Tensor,
                       positions: torch.Tensor, slot_mapping: torch.Tensor, block_table: torch.Tensor,
                       block_size: int, rms_norm_weight: torch.Tensor, rms_norm_eps: float,
                       cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, kv_slot_mapping: torch.Tensor,
                       kv_cache_block_size: int, head_size: int = 512, quant_block: int = 64,
                       compressed_kv: torch.Tensor | None = None, cache_format: str = "fp8_ds_mla",
                       fp8_scale: torch.Tensor | None = None) -> None:
        args = (state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
                rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size)
        if k_cache.device.type == "cuda":
            ops.compress_c128a(*args, head_size=head_size, quant_block=quant_block,
                               compressed_kv=compressed_kv, cache_format=cache_format, fp8_scale=fp8_scale)
            return
        _c128a_reference(args, head_size, quant_block, compressed_kv, cache_format, fp8_scale)

    return define_op("compress_c128a", compress_c128a, ("k_cache", "compressed_kv"))


def define_op(name: str, impl, mutates_args: tuple[str, ...], namespace: str = NAMESPACE):
    """torch.ops.<namespace>.<name>.default: `impl` for every device, its schema inferred from its
    annotations with `mutates_args` written, a fake impl that does nothing, and the version bump
    of the written tensors (what torch.library.custom_op registers, robust to dropped defaults)."""
    lib = torch.library.Library(namespace, "FRAGMENT")
    lib.define(name + torch.library.infer_schema(impl, mutates_args=mutates_args),
               tags=(torch.Tag.pt2_compliant_tag,))
    lib.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{namespace}::{name}", _nothing, lib=lib)
    op = getattr(getattr(torch.ops, namespace), name).default
    written = [(i, a.name) for i, a in enumerate(op._schema.arguments)
               if a.alias_info is not None and a.alias_info.is_write]
    lib.impl(name, lambda keyset, *args, **kwargs: _bump_versions(op, written, keyset, args, kwargs),
             "ADInplaceOrView", with_keyset=True)
    _libraries.append(lib)
    return op


def _bump_versions(op, written: list[tuple[int, str]], keyset, args: tuple, kwargs: dict) -> None:
    """ADInplaceOrView: bump the version counter of every written tensor, then run the op. A
    written argument past len(args) was dropped by the dispatcher for equalling its default (None)."""
    for index, name in written:
        value = args[index] if index < len(args) else kwargs.get(name)
        if isinstance(value, torch.Tensor):
            torch.autograd.graph.increment_version(value)
    return op.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, *args, **kwargs)


def _c128a_reference(args: tuple, head: int, block: int, compressed_kv: torch.Tensor | None,
                     cache_format: str, fp8_scale: torch.Tensor | None) -> None:
    pool = ops.kernel_spec("c128a_compress", head, block, "f32")
    store = ops.kernel_spec("c128a_store", head, block, weight_dtype_name(args[6]), cache_format)
    named = ops._named(*args, fp8_scale=fp8_scale)
    values = ops._common_values(store, named, pool)
    T = int(values["num_rows"])
    if compressed_kv is not None:
        compressed_values(pool, compressed_kv, T)
    pooled = torch.zeros(T, head) if compressed_kv is None else compressed_kv
    sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs = args
    reference.c128a_compress(pool, sc, req, pos, slots, bt, bs, pooled, kvs)
    reference.c128a_store(store, pooled, req, pos, slots, w, eps, cs, kc.view(torch.uint8), kvs, kvbs,
                          fp8_scale=fp8_scale)


def _nothing(*args: object, **kwargs: object) -> None:
    """The fake (meta) impl: the ops only write their mutated arguments, which keep their shapes."""
    return None
