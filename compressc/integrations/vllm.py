"""compressc inside vLLM: DeepSeek-V4 compressor dispatchers with vLLM's keywords, and the plugin.

vLLM's `DeepseekCompressor` (vllm/models/deepseek_v4/compressor.py) calls one callable per
layer and step with keywords (vLLM 0.34's call sites): the head-512 CuTe dispatcher
(`_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL`, or `compress_norm_rope_store_cutedsl` in older
versions; imported inside the call, so the defining module's attribute is what to replace)
and the Triton launcher `compress_norm_rope_store_triton` (head-128 indexer and GPUs without
CuTe; imported at module load, so the consumer modules' names are replaced too).

`CuteDispatcher` and `TritonDispatcher` take exactly those parameters, in vLLM's order, and
any newer keyword (ignored unless it asks for a format compressc lacks). Each call is routed
by its layer-constant keywords (head, ratio, cache dtype, flags) to `compress_c4a` or
`compress_c128a` (packed, full bf16 or full fp8 cache), `compress_indexer_fp8` or
`compress_indexer_mxfp4` (either one rotated on `rotate=True`); what compressc does not
serve (the C128 ring, int8, other GPUs) goes to vLLM's own callable, with one INFO line per
reason. `register` is the `vllm.general_plugins` entry point.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from compressc.integrations import vllm_warmup
from compressc.integrations.after_import import when_imported
from compressc.runtime import ops

# Under vLLM's logger: vLLM's logging configuration prints "vllm.*" INFO lines, not others.
log = logging.getLogger("vllm.compressc")

CUTE_MODULE = "vllm.models.deepseek_v4.nvidia.ops.sparse_attn_compress_cutedsl"
TRITON_MODULE = "vllm.models.deepseek_v4.common.ops.fused_compress_quant_cache"
COMPRESSOR_MODULE = "vllm.models.deepseek_v4.compressor"
HW_AGNOSTIC_MODULE = "vllm.models.deepseek_v4.hw_agnostic.attention.compressor"
MODEL_PACKAGE = "vllm.models.deepseek_v4"
# keywords of newer vLLM versions that ask for something compressc does not compute yet
RING_KEYWORDS = ("kv", "score", "ape", "query_start_loc")  # what a ring call adds (is_circular=True)
UNSERVED_FLAGS = {
    "is_circular": "the C128 ring state (is_circular=True)",  # served for the packed C128 cache
    "int8_ds_mla": "the int8_ds_mla cache (int8_ds_mla=True)",
    "rotate": "Hadamard-rotated keys (rotate=True)",  # served for the head-128 indexer only
}
_SERVED_ARCHS = ("sm_90a", "sm_100a", "sm_100f", "sm_103a", "sm_120a")
_logged: set[tuple[str, str]] = set()  # (dispatcher, reason) already logged


@dataclass(frozen=True, slots=True)
class Route:
    """Where one layer's calls go: a compressc op, or (op None) vLLM's own callable and why."""

    op: Callable[..., None] | None
    reason: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()  # the format's keywords (cache_format, rotate)
    scale: bool = False  # pass the call's fp8_scale (the full fp8 cache)
    forward: tuple[str, ...] = ()  # newer keywords handed on per call (the ring's kv, score, ...)

    def run(self, args: tuple, fp8_scale: Any = None, newer: dict | None = None) -> None:
        extra = dict(self.kwargs)
        if self.scale:
            extra["fp8_scale"] = fp8_scale if fp8_scale is not None else _ones(args[9].device)
        for name in self.forward:
            extra[name] = (newer or {})[name]
        self.op(*args, **extra)  # type: ignore[misc]


_ONES: dict = {}


def _ones(device: torch.device) -> torch.Tensor:
    """vLLM's stand-in for a missing fp8_scale, one per device (allocated outside any graph)."""
    if device not in _ONES:
        _ONES[device] = torch.ones(1, dtype=torch.float32, device=device)
    return _ONES[device]


class _Dispatcher:
    """Common part: the replaced callable, the route table, attribute pass-through."""

    def __init__(self, original: Any, name: str) -> None:
        self.original, self.name = original, name
        self.routes: dict[tuple, Route] = {}
        self.__wrapped__ = original

    def __getattr__(self, attr: str) -> Any:  # vLLM's object keeps its attributes (kernel instances)
        if attr in ("original", "name", "routes"):
            raise AttributeError(attr)
        return getattr(self.original, attr)

    def __repr__(self) -> str:
        return f"<compressc dispatcher for vLLM's {self.name}>"

    def _route(self, key: tuple, decide: Callable[..., Route], *facts: Any) -> Route:
        """A layer signature seen for the first time: decide, remember, and say so if vLLM keeps it."""
        route = self.routes[key] = decide(*facts)
        if route.op is None:
            _log_fallback(self.name, route.reason)
        return route


def _log_fallback(name: str, reason: str) -> None:
    if (name, reason) not in _logged:
        _logged.add((name, reason))
        log.info("compressc: vLLM's own %s runs these calls: %s", name, reason)


class CuteDispatcher(_Dispatcher):
    """Replaces the head-512 CuTe DSL dispatcher (vLLM 0.34's signature, same parameters)."""

    def __call__(self, state_cache, num_actual, token_to_req_indices, positions, slot_mapping,
                 block_table, block_size, state_width, cos_sin_cache, kv_cache, k_cache_metadata,
                 pdl_kwargs, head_dim, rope_head_dim, compress_ratio, overlap, use_fp4_cache,
                 rms_norm_weight, rms_norm_eps, quant_block, token_stride, scale_dim,
                 store_full_kv=False, store_full_fp8=False, fp8_scale=None, **newer: Any) -> Any:
        key = (head_dim, rope_head_dim, compress_ratio, store_full_kv, store_full_fp8, kv_cache.dtype,
               kv_cache.dim(), kv_cache.get_device(), _flags(newer) if newer else ())
        route = self.routes.get(key) or self._route(key, route_cute, *key[:8], newer)
        if route.op is None:
            return self.original(**_keywords(locals()))
        if num_actual != slot_mapping.numel():
            slot_mapping = slot_mapping[:num_actual]
        route.run((state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
                   rms_norm_weight, rms_norm_eps, cos_sin_cache, kv_cache, k_cache_metadata.slot_mapping,
                   kv_cache.shape[1]), fp8_scale, newer)
        return None


class TritonDispatcher(_Dispatcher):
    """Replaces `compress_norm_rope_store_triton` (its 22 parameters, no defaults)."""

    def __call__(self, state_cache, num_actual, token_to_req_indices, positions, slot_mapping,
                 block_table, block_size, state_width, cos_sin_cache, kv_cache, k_cache_metadata,
                 pdl_kwargs, head_dim, rope_head_dim, compress_ratio, overlap, use_fp4_cache,
                 rms_norm_weight, rms_norm_eps, quant_block, token_stride, scale_dim, **newer: Any) -> Any:
        key = (head_dim, rope_head_dim, compress_ratio, use_fp4_cache, quant_block, token_stride, scale_dim,
               kv_cache.dtype, kv_cache.dim(), kv_cache.get_device(), _flags(newer) if newer else ())
        route = self.routes.get(key) or self._route(key, route_triton, *key[:10], newer)
        if route.op is None:
            return self.original(**_keywords(locals()))
        if num_actual != slot_mapping.numel():  # vLLM launches num_actual rows (= all, in every version read)
            slot_mapping = slot_mapping[:num_actual]
        route.run((state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
                   rms_norm_weight, rms_norm_eps, cos_sin_cache, kv_cache, k_cache_metadata.slot_mapping,
                   kv_cache.shape[1]))
        return None


def _flags(newer: dict) -> tuple:
    return tuple(sorted(name for name in UNSERVED_FLAGS if newer.get(name)))


def _keywords(frame: dict) -> dict:
    """The call's keywords as vLLM passed them, for its own callable."""
    kwargs = {k: v for k, v in frame.items() if k not in ("self", "newer", "key", "route")}
    kwargs.update(frame["newer"])
    return kwargs


# -- routing: one decision per layer signature -------------------------------------------------
def route_cute(head_dim, rope_head_dim, ratio, store_full_kv, store_full_fp8, dtype, dim, device,
               newer: dict) -> Route:
    """The compressc op for a CuTe dispatcher call, or why vLLM's own kernel must run it."""
    if store_full_fp8 and not store_full_kv:
        return Route(None, "store_full_fp8=True without store_full_kv=True (vLLM rejects it too)")
    fmt = "full_fp8" if store_full_fp8 else "full_bf16" if store_full_kv else "fp8_ds_mla"
    if newer.get("is_circular") and ratio == 128 and fmt == "fp8_ds_mla":
        return _route_ring(head_dim, rope_head_dim, dtype, dim, device, newer)
    route = _route_main(head_dim, rope_head_dim, ratio, dtype, dim, device, newer, fmt)
    if route.op is None or fmt == "fp8_ds_mla":
        return route
    return Route(route.op, kwargs=(("cache_format", fmt),), scale=fmt == "full_fp8")


def route_triton(head_dim, rope_head_dim, ratio, use_fp4_cache, quant_block, token_stride, scale_dim,
                 dtype, dim, device, newer: dict) -> Route:
    """The compressc op for a Triton launcher call (indexer or packed main KV), or why not."""
    layout = (quant_block, token_stride, scale_dim)
    if head_dim == 128:
        rotate = bool(newer.get("rotate"))
        served = {k: v for k, v in newer.items() if k != "rotate"}
        problem = _common_problem(rope_head_dim, ratio, (4,), dtype, dim, device, served)
        want, op = ((32, 64, 4), ops.compress_indexer_mxfp4) if use_fp4_cache else \
            ((128, 128, 4), ops.compress_indexer_fp8)
        if problem is None and layout != want:
            problem = f"indexer layout quant_block/token_stride/scale_dim = {layout}, expected {want}"
        return Route(None, problem) if problem else Route(op, kwargs=(("rotate", True),) if rotate else ())
    if layout != (64, 576, 8):
        problem = f"head_dim={head_dim} with layout {layout}: compressc serves fp8_ds_mla (64, 576, 8)"
        return Route(None, problem)
    return _route_main(head_dim, rope_head_dim, ratio, dtype, dim, device, newer)


def _route_ring(head_dim, rope_head_dim, dtype, dim, device, newer: dict) -> Route:
    """is_circular=True (docs/kernels.md §10): the ring compress kernel and the unchanged store,
    with the call's raw rows; vLLM saves the ring's tail itself afterwards."""
    missing = [name for name in RING_KEYWORDS if newer.get(name) is None]
    if missing:
        return Route(None, f"is_circular=True without {', '.join(missing)}: the ring kernel reads this "
                           "launch's raw rows")
    served = {k: v for k, v in newer.items() if k != "is_circular"}
    route = _route_main(head_dim, rope_head_dim, 128, dtype, dim, device, served)
    return route if route.op is None else Route(ops.compress_c128a_ring, forward=RING_KEYWORDS)


_CACHE_DTYPES = {"fp8_ds_mla": torch.uint8, "full_bf16": torch.bfloat16, "full_fp8": torch.float8_e4m3fn}


def _route_main(head_dim, rope_head_dim, ratio, dtype, dim, device, newer: dict,
                fmt: str = "fp8_ds_mla") -> Route:
    if head_dim != 512:
        problem = f"head_dim={head_dim}: compressc serves the 512-wide main KV and the 128-wide indexer"
        return Route(None, problem)
    problem = _common_problem(rope_head_dim, ratio, (4, 128), dtype, dim, device, newer, _CACHE_DTYPES[fmt])
    if problem:
        return Route(None, problem)
    return Route(ops.compress_c4a if ratio == 4 else ops.compress_c128a)


def _common_problem(rope, ratio, ratios, dtype, dim, device, newer: dict,
                    cache_dtype: torch.dtype = torch.uint8) -> str | None:
    flags = _flags(newer)
    if flags:
        return f"{UNSERVED_FLAGS[flags[0]]} is not a compressc format yet"
    if rope != 64:
        return f"rope_head_dim={rope}: compressc kernels rotate 64 dims"
    if ratio not in ratios:
        return f"compress_ratio={ratio}: expected one of {ratios}"
    if dtype != cache_dtype or dim != 3:
        return (f"kv_cache is {dim}-D {dtype}: compressc writes this cache as 3-D {cache_dtype} "
                "[pages, block, ...]")
    return _device_problem(device)


def _device_problem(device: int) -> str | None:
    if device < 0:
        return "kv_cache is not on a CUDA device"
    from compressc.runtime.resolve import arch_for_capability

    arch = arch_for_capability(tuple(torch.cuda.get_device_capability(device)))
    if arch not in _SERVED_ARCHS:
        return f"cuda:{device} is {arch}: compressc kernels are built for {', '.join(_SERVED_ARCHS)}"
    return None


# -- the plugin ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """One name the DSv4 model calls: where it lives and which dispatcher replaces it."""

    module: str
    attr: str
    dispatcher: type[_Dispatcher]


TARGETS = (
    Target(CUTE_MODULE, "_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL", CuteDispatcher),
    Target(CUTE_MODULE, "compress_norm_rope_store_cutedsl", CuteDispatcher),
    Target(TRITON_MODULE, "compress_norm_rope_store_triton", TritonDispatcher),
    Target(COMPRESSOR_MODULE, "compress_norm_rope_store_triton", TritonDispatcher),
    Target(HW_AGNOSTIC_MODULE, "compress_norm_rope_store_triton", TritonDispatcher),
)
_state = {"registered": False}
patched: list[str] = []  # "module.attr" of every name replaced in this process


def register() -> None:
    """The `vllm.general_plugins` entry point: route vLLM's DSv4 compressor calls to compressc.

    Runs in every vLLM process, maybe many times: the second call does nothing. Imports no
    vLLM kernel module (they import cutlass): each name is replaced when its module loads.
    """
    if _state["registered"]:
        return
    _state["registered"] = True
    reason = _why_not()
    if reason:
        log.debug("compressc: vLLM plugin inactive: %s", reason)
        return
    for target in TARGETS:
        when_imported(target.module, lambda module, t=target: patch(module, t))
    when_imported(vllm_warmup.WARMUP_MODULE, vllm_warmup.join_warmup)
    names = sorted({f"{t.module.rsplit('.', 1)[-1]}.{t.attr}" for t in TARGETS})
    log.info("compressc: vLLM DeepSeek-V4 compressor calls go to compressc kernels (replacing, as their "
             "modules load: %s; COMPRESSC_VLLM=0 turns this off)", ", ".join(names))


def _why_not() -> str | None:
    from compressc.config import Config, ConfigError

    try:
        if not Config.from_env().vllm_plugin:
            return "COMPRESSC_VLLM=0"
    except ConfigError as exc:
        log.warning("compressc: vLLM plugin off: %s", exc)
        return str(exc)
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    if _find_spec(MODEL_PACKAGE) is None:
        return f"this vLLM has no DeepSeek-V4 model ({MODEL_PACKAGE})"
    return _platform_problem()


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _platform_problem() -> str | None:
    try:  # vLLM resolves its platform on first use: that may import anything
        from vllm.platforms import current_platform

        if current_platform.is_cuda():
            return None
        name = getattr(current_platform, "device_name", "unknown")
    except Exception as exc:  # a vLLM we cannot ask: leave it alone
        return f"vLLM's platform cannot be determined ({type(exc).__name__}: {exc})"
    return f"the platform is not CUDA ({name})"


def patch(module: ModuleType, target: Target) -> None:
    """Replace `module.<attr>` with a dispatcher around it (once; a missing name is skipped)."""
    original = getattr(module, target.attr, None)
    if original is None or isinstance(original, _Dispatcher):
        return
    setattr(module, target.attr, target.dispatcher(original, target.attr))
    patched.append(f"{target.module}.{target.attr}")
    log.debug("compressc: replaced %s.%s", target.module, target.attr)
