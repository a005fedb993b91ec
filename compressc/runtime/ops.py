"""Torch-facing compressor ops with vLLM's argument lists (docs/kernels.md §2).

Each op checks its arguments (`validate`), finds its kernel once per device
(`resolve`: kernel packs -> user cache -> JIT build), loads it (`loader`, imported
on first launch so that this module imports without CUDA) and launches one CTA per
row on torch's current stream. `k_cache` is written in place; nothing is returned.
"""

from __future__ import annotations

import importlib
import threading
from functools import cache
from threading import get_ident as _thread_id  # each thread packs its own buffers
from typing import TYPE_CHECKING, Any

import torch

from compressc.runtime.args import ArgPacker
from compressc.runtime.c128a_split import (
    SPLIT_STEP_NAMES,
    split_rows_limit,
    split_workspace,
    takes_split,
    workspace_pointer,
)
from compressc.runtime.fastpath import Prepared, SignatureCache, cacheable_index
from compressc.runtime.resolve import check_image, find_kernel
from compressc.runtime.validate import (
    Values,
    check_device,
    compressed_values,
    nonempty,
    row_values,
    state_values,
    store_values,
    weight_dtype_name,
)
from compressc.specs.abi import abi
from compressc.specs.errors import SpecError
from compressc.specs.family import KernelSpec, make_spec
from compressc.specs.lanes import derive_elems

_KERNELS: dict[tuple[int, str], object] = {}  # (device index, variant) -> loader.LoadedKernel
_IMAGES: dict[tuple[str, str], object] = {}  # (arch, variant) -> its checked resolve.KernelImage
_SCRATCH: dict[torch.device, list[torch.Tensor]] = {}  # every buffer ever handed out, newest last
_LOCK = threading.Lock()
_SIGNATURES = {"c4a": SignatureCache(), "indexer_fp8": SignatureCache(), "indexer_mxfp4": SignatureCache(),
               "c128a": SignatureCache(), "c128a_split": SignatureCache()}
_debug: list[bool] = []  # [COMPRESSC_DEBUG_CHECKS], read once on the first call


def set_debug_checks(enabled: bool | None) -> None:
    """Check every argument and launch through cuda-bindings on every call (True), use the
    signature cache (False), or read COMPRESSC_DEBUG_CHECKS again on the next call (None)."""
    _debug[:] = [] if enabled is None else [bool(enabled)]
    for signatures in _SIGNATURES.values():
        signatures.clear()


def debug_checks() -> bool:
    """Whether every call runs the full checks (COMPRESSC_DEBUG_CHECKS=1, COMPRESSC_CHECK_BOUNDS=1
    or set_debug_checks)."""
    if not _debug:
        from compressc.config import Config

        config = Config.from_env()
        # the bounds mode reads the index values of every call: no call may skip the checks
        _debug.append(config.debug_checks or config.check_bounds)
    return _debug[0]


@cache
def kernel_spec(kernel: str, head_size: int, quant_block: int, weight_dtype: str,
                cache_format: str | None = None, rotate: bool = False, bounds: bool = False) -> KernelSpec:
    """The validated spec of one variant (SpecError names a bad head_size/quant_block/format,
    or a head no lane layout fits: checked here, before any lookup, build or launch);
    `bounds`: its checked build (COMPRESSC_CHECK_BOUNDS=kernel)."""
    spec = make_spec(kernel, head_size, quant_block, weight_dtype=weight_dtype, cache_format=cache_format,
                     rotate=rotate, bounds=bounds)
    try:
        derive_elems(spec)
    except ValueError as err:
        raise SpecError("head_size", head_size, str(err).split(": ", 1)[1]) from None
    return spec


@cache
def _packer(spec: KernelSpec) -> ArgPacker:
    return ArgPacker(abi(spec))


def compress_c4a(
    state_cache: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
    kv_cache_block_size: int,
    *,
    head_size: int = 512,
    quant_block: int = 64,
    cache_format: str = "fp8_ds_mla",
    fp8_scale: torch.Tensor | None = None,
) -> None:
    """C4A: pool the 8-row overlapping window, RMSNorm, rope, and store into k_cache as
    `cache_format`: "fp8_ds_mla" (packed uint8 pages), "full_bf16" (k_cache bf16
    [pages, B, 512]) or "full_fp8" (k_cache float8_e4m3fn [pages, B, 512], values times
    1 / fp8_scale[0]; fp8_scale a float32 device tensor, vLLM's is ones(1))."""
    _fused(
        "c4a", state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
        rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size,
        head_size, quant_block, (cache_format, False), fp8_scale,
    )


def compress_c128a(
    state_cache: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
    kv_cache_block_size: int,
    *,
    head_size: int = 512,
    quant_block: int = 64,
    compressed_kv: torch.Tensor | None = None,
    cache_format: str = "fp8_ds_mla",
    fp8_scale: torch.Tensor | None = None,
) -> None:
    """C128A: c128a_compress (pooling into fp32 rows) then c128a_store (docs/kernels.md §5);
    at T <= compressc.runtime.c128a_split.split_rows_limit() one c128a_split launch instead
    (docs/kernels.md §13: the packed format, compressed_kv None, no checked build).

    compressed_kv: fp32 [>= T, head_size] for the pooled rows; when None a per-device
    scratch buffer is used (grown outside CUDA graph capture; see reserve_c128a_scratch).
    cache_format, fp8_scale: as compress_c4a's.
    """
    _c128a(
        state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
        rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size,
        head_size, quant_block, compressed_kv, (cache_format, False), fp8_scale,
    )


# -- the eager path: one signature check, one struct pack, one driver call per kernel ------
def _fused(kernel, sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs, head, qb, fmt, scale) -> None:
    if _debug[0] if _debug else debug_checks():
        args = _named(sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs, fp8_scale=scale)
        return _launch_checked(_checked_fused(kernel, head, qb, fmt, args))
    try:
        key = (_thread_id(), head, qb, fmt, bs, kvbs, eps, sc.data_ptr(), w.data_ptr(), cs.data_ptr(),
               kc.data_ptr(), None if scale is None else scale.data_ptr())
        T = slots.numel()
        prepared = _SIGNATURES[kernel].entries.get(key)
        # the guard's arguments spelled out (no tuple built and unpacked per call)
        hit = prepared is not None and req.numel() >= T and (
            prepared.guard(sc, w, cs, kc, req, pos, slots, kvs, bt) if scale is None
            else prepared.guard(sc, w, cs, kc, scale, req, pos, slots, kvs, bt))
    except (AttributeError, TypeError):  # not tensors: the checked path names the argument
        key, hit = None, False
    if not hit:
        owned = (sc, w, cs, kc) if scale is None else (sc, w, cs, kc, scale)
        args = _named(sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs, fp8_scale=scale)
        checked = _checked_fused(kernel, head, qb, fmt, args)
        if checked is None:
            return None
        prepared, T = _prepare(checked), int(checked[0]["num_rows"])
        if key is not None and _cacheable(args):
            _SIGNATURES[kernel].add(key, prepared, (*owned, req, pos, slots, kvs, bt), free=5)
    if T:
        ws = workspace_pointer(prepared.device, T, head) if kernel == "c128a_split" else 0
        prepared.run((req.data_ptr(), pos.data_ptr(), slots.data_ptr(), bt.data_ptr(), kvs.data_ptr(), ws,
                      T, pos.numel(), kvs.numel()), T)
    return None


def _c128a(sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs, head, qb, ckv, fmt, scale) -> None:
    # small T: one launch (c128a_split, docs/kernels.md §13), decided from the shapes only
    T = slots.numel() if isinstance(slots, torch.Tensor) else 0
    if takes_split(T, fmt[0], ckv, bounds_in_kernel(), (head, qb)):
        return _fused("c128a_split", sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs, head, qb, fmt,
                      scale)
    if _debug[0] if _debug else debug_checks():
        args = _named(sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs,
                      compressed_kv=ckv, fp8_scale=scale)
        return _launch_checked(_checked_c128a(head, qb, fmt, args))
    owned = tuple(t for t in (sc, w, cs, kc, ckv, scale) if t is not None)
    try:
        key = (_thread_id(), head, qb, fmt, bs, kvbs, eps, sc.data_ptr(), w.data_ptr(), cs.data_ptr(),
               kc.data_ptr(), _ptr_or_none(ckv), _ptr_or_none(scale))
        T = slots.numel()
        prepared = _SIGNATURES["c128a"].entries.get(key)
        hit = (prepared is not None and prepared.guard(*owned, req, pos, slots, kvs, bt)
               and req.numel() >= T and (ckv is None or ckv.shape[0] >= T))
    except (AttributeError, TypeError):
        key, hit = None, False
    kv_ptr = None
    if not hit:
        args = _named(sc, req, pos, slots, bt, bs, w, eps, cs, kc, kvs, kvbs,
                      compressed_kv=ckv, fp8_scale=scale)
        checked = _checked_c128a(head, qb, fmt, args)
        if checked is None:
            return None
        prepared, T, kv_ptr = _prepare(checked), int(checked[0]["num_rows"]), checked[0]["compressed_kv"]
        if key is not None and _cacheable(args):
            _SIGNATURES["c128a"].add(key, prepared, (*owned, req, pos, slots, kvs, bt), free=5)
    if T:
        if kv_ptr is None:
            kv_ptr = _scratch_pointer(prepared, T, head) if ckv is None else ckv.data_ptr()
        prepared.run((req.data_ptr(), pos.data_ptr(), slots.data_ptr(), bt.data_ptr(), kvs.data_ptr(),
                      kv_ptr, T, pos.numel(), kvs.numel()), T)
    return None


def _ptr_or_none(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_ARG_NAMES = ("state_cache", "token_to_req_indices", "positions", "slot_mapping", "block_table",
              "block_size", "rms_norm_weight", "rms_norm_eps", "cos_sin_cache", "k_cache",
              "kv_slot_mapping", "kv_cache_block_size")


def _named(*values: object, **extra: object) -> dict:
    return dict(zip(_ARG_NAMES, values, strict=True), **extra)


_STEP_TENSORS = ("token_to_req_indices", "positions", "slot_mapping", "kv_slot_mapping", "block_table")


def _cacheable(args: dict) -> bool:
    """Checks that passed for this call pass for every call with its signature: plain scalars
    (a tensor block size could change in place) and index tensors whose layout is length-free."""
    scalars = (type(args["block_size"]) is int and type(args["kv_cache_block_size"]) is int
               and type(args["rms_norm_eps"]) in (int, float))
    return scalars and all(cacheable_index(args[name]) for name in _STEP_TENSORS)


def _scratch_pointer(prepared: Prepared, T: int, head: int) -> int:
    buffers = _SCRATCH.get(prepared.device)
    if buffers and buffers[-1].numel() >= T * head:
        return buffers[-1].data_ptr()
    return scratch_buffer(prepared.device, T, head).data_ptr()


def _prepare(checked: tuple) -> Prepared:
    """The argument buffer and loaded kernels of a checked call (a signature-cache miss)."""
    values, device, specs = checked
    kernels = [(kernel_for(spec, device), abi(spec), i > 0) for i, spec in enumerate(specs)]
    index = device.index if device.index is not None else torch.cuda.current_device()
    values = dict(values, compressed_kv=values.get("compressed_kv", 0))
    if specs[0].kernel == "c128a_split":  # its workspace pointer takes compressed_kv's step slot
        return Prepared(kernels, values, index, device, step_names=SPLIT_STEP_NAMES)
    return Prepared(kernels, values, index, device)


# -- the checked path (every call with COMPRESSC_DEBUG_CHECKS=1) -------------------------
def _checked_fused(kernel: str, head_size: int, quant_block: int, fmt: tuple, args: dict) -> tuple | None:
    """(ABI values, device, specs) after every check; None when there are no rows."""
    weight = weight_dtype_name(args["rms_norm_weight"])
    spec = kernel_spec(kernel, head_size, quant_block, weight, *fmt, bounds=bounds_in_kernel())
    values = _common_values(spec, args, spec)
    device = check_device(_tensors(args))
    if values["num_rows"] == 0:
        return None
    if kernel == "c128a_split":
        values["split_workspace"] = workspace_pointer(device, int(values["num_rows"]), head_size)
    return _with_record(values, args, device, spec), device, (spec,)


def _checked_c128a(head_size: int, quant_block: int, fmt: tuple, args: dict) -> tuple | None:
    """(ABI values, device, (compress spec, store spec)); a None compressed_kv is the scratch."""
    checked = bounds_in_kernel()
    pool_spec = kernel_spec("c128a_compress", head_size, quant_block, "f32", bounds=checked)
    weight = weight_dtype_name(args["rms_norm_weight"])
    store_spec = kernel_spec("c128a_store", head_size, quant_block, weight, *fmt, bounds=checked)
    values = _common_values(store_spec, args, pool_spec)
    compressed_kv = args["compressed_kv"]
    if compressed_kv is not None:
        values |= compressed_values(pool_spec, compressed_kv, int(values["num_rows"]))
    device = check_device(_tensors(args))
    T = int(values["num_rows"])
    if T == 0:
        return None
    if compressed_kv is None:
        values |= compressed_values(pool_spec, scratch_buffer(device, T, head_size), T)
    return _with_record(values, args, device, pool_spec), device, (pool_spec, store_spec)


def _with_record(values: Values, args: dict, device: torch.device, spec: KernelSpec) -> Values:
    """A checked build's values: the device's error record and the extents its rows index."""
    if not spec.bounds:
        return values
    from compressc.runtime.bounds_kernel import kernel_values

    return values | kernel_values(args, device)


def _launch_checked(checked: tuple | None) -> None:
    if checked is None:
        return
    values, device, specs = checked
    for i, spec in enumerate(specs):
        # C128A: the store right after its compress kernel on the same stream may start under its tail
        _launch(spec, device, values, overlap_previous=i > 0)
    if specs[0].bounds:
        from compressc.runtime.bounds_kernel import after_launch

        after_launch(device)


def _common_values(store_spec: KernelSpec, args: dict, pool_spec: KernelSpec) -> Values:
    rows = row_values(
        args["token_to_req_indices"], args["positions"], args["slot_mapping"], args["kv_slot_mapping"]
    )
    state = state_values(pool_spec, args["state_cache"], args["block_table"], args["block_size"])
    store = store_values(
        store_spec,
        args["rms_norm_weight"],
        args["rms_norm_eps"],
        args["cos_sin_cache"],
        args["k_cache"],
        args["kv_cache_block_size"],
        args.get("fp8_scale"),
    )
    nonempty(int(rows["num_rows"]), _tensors(args))
    if check_bounds_enabled() and not pool_spec.bounds:  # a checked build checks on the GPU
        from compressc.runtime.bounds import check_bounds

        check_bounds(pool_spec, args, int(rows["num_rows"]))
    return rows | state | store


@cache
def check_bounds_enabled() -> bool:
    """COMPRESSC_CHECK_BOUNDS, read once per process (compressc.config)."""
    from compressc.config import Config

    return Config.from_env().check_bounds


@cache
def bounds_in_kernel() -> bool:
    """COMPRESSC_CHECK_BOUNDS=kernel: the ops with a checked build serve it (runtime/bounds_kernel.py)."""
    from compressc.config import Config

    return Config.from_env().bounds_in_kernel


def _tensors(args: dict) -> dict[str, torch.Tensor]:
    """The op's tensor arguments by name (None for an absent optional one is left out)."""
    return {name: value for name, value in args.items() if isinstance(value, torch.Tensor)}


# -- kernels and launches ---------------------------------------------------------------
def _launch(spec: KernelSpec, device: torch.device, values: Values, overlap_previous: bool = False) -> None:
    kernel = kernel_for(spec, device)
    kernel.launch_rows(int(values["num_rows"]), _packer(spec).pack(values), overlap_previous=overlap_previous)


def kernel_for(spec: KernelSpec, device: torch.device):
    """The loaded kernel of `spec` on `device`, resolved and loaded on first use."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _KERNELS.get((index, spec.variant))
    if kernel is not None:
        return kernel
    from compressc.runtime import loader  # the one CUDA import, deferred to the first launch

    kernel = loader.load_kernel(kernel_image(spec, index), index)
    _KERNELS[(index, spec.variant)] = kernel
    return kernel


def kernel_image(spec: KernelSpec, index: int):
    """The checked kernel image of `spec` for device `index`'s arch, resolved once per
    (arch, variant) per process: every device of one arch, and kernel_for after a separate
    resolve (benchmarks/cold_start.py --breakdown), reuse it."""
    from compressc.runtime.loader import device_arch

    arch = device_arch(index)
    image = _IMAGES.get((arch, spec.variant))
    if image is None:
        image = find_kernel(spec, arch)
        check_image(image)  # the cubin's own .nv.info against the launch fields the loader uses
        _IMAGES[(arch, spec.variant)] = image
    return image


# -- C128A scratch ----------------------------------------------------------------------
def scratch_buffer(
    device: torch.device, rows: int, head_size: int, *, capturing: bool | None = None
) -> torch.Tensor:
    """fp32 [rows, head_size] view of the device's scratch buffer, grown when too small.

    Growing allocates, which must not happen during CUDA graph capture (the memory
    would belong to the graph's pool): then a RuntimeError says how to reserve it.
    `capturing` (default: ask torch, only when growing) is whether a capture is on.
    Outgrown buffers are kept, never freed: a captured graph may still write to one.
    Growth doubles, so they hold at most as much as the newest. One buffer serves every
    call on the device: ops on concurrent streams must pass their own compressed_kv.
    """
    need = rows * head_size
    buffers = _SCRATCH.setdefault(device, [])
    if not buffers or buffers[-1].numel() < need:
        if capturing is None:
            capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if capturing:
            raise RuntimeError(
                f"compress_c128a needs a {rows} x {head_size} fp32 scratch buffer during CUDA graph capture; "
                f"call compressc.runtime.reserve_c128a_scratch({rows}, {head_size}, device) before capture "
                f"or pass compressed_kv="
            )
        with _LOCK:
            size = max(need, 2 * buffers[-1].numel() if buffers else 0)
            buffers.append(torch.empty(size, dtype=torch.float32, device=device))
    return buffers[-1][:need].view(rows, head_size)


def reserve_c128a_scratch(
    num_rows: int, head_size: int = 512, device: torch.device | str | None = None
) -> None:
    """Allocate the scratch that compress_c128a uses for up to num_rows rows (call before capture):
    the pair's pooled rows and, for the rows c128a_split takes, its zeroed workspace."""
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    scratch_buffer(device, num_rows, head_size)
    split_rows = min(num_rows, split_rows_limit())
    if split_rows > 0:
        split_workspace(device, split_rows, head_size)


# The other families' ops use the above and are imported on first use (PEP 562), so that a
# process serving C4A and C128A does not pay their import in its cold start (issue 16 item 3):
# the online C128 ops (§9, runtime/online.py), the indexer ops (runtime/indexer_ops.py), one
# launch for a CSA layer (§12, runtime/csa.py) and the C128 ring state (§10, runtime/ring.py).
_LAZY = {
    "compress_csa": "csa", "csa_arguments": "csa",
    "compress_indexer_fp8": "indexer_ops", "compress_indexer_mxfp4": "indexer_ops",
    "compress_c128a_online": "online", "online_c128_merge": "online",
    "compress_c128a_ring": "ring", "save_ring_tail": "ring",
}


if TYPE_CHECKING:  # what type checkers see; at run time each name loads on first use
    from compressc.runtime.csa import compress_csa as compress_csa
    from compressc.runtime.csa import csa_arguments as csa_arguments
    from compressc.runtime.indexer_ops import compress_indexer_fp8 as compress_indexer_fp8
    from compressc.runtime.indexer_ops import compress_indexer_mxfp4 as compress_indexer_mxfp4
    from compressc.runtime.online import compress_c128a_online as compress_c128a_online
    from compressc.runtime.online import online_c128_merge as online_c128_merge
    from compressc.runtime.ring import compress_c128a_ring as compress_c128a_ring
    from compressc.runtime.ring import save_ring_tail as save_ring_tail


def __getattr__(name: str) -> Any:
    # The value found on first use is kept (later uses cost a dict lookup, as before), as the
    # eager import at the end of this module did: patch a name where its caller looks it up.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"compressc.runtime.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
