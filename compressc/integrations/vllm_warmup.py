"""compressc's kernels in vLLM's JIT warm-up (vLLM's JitWarmupRegistry).

vLLM collects warmable kernels while a runner sets up (`JitWarmupRegistry`) and compiles
them in `JitWarmupRegistry.warmup()`, before serving and before CUDA graph capture; with
`--jit-monitor-mode error` a compile after that is an error. The plugin wraps that method:
after vLLM's own kernels, `compressc.runtime.preload` loads (building first, when the JIT is
allowed and no kernel pack has them) every compressc kernel the model's configuration will
launch, on the runner's device. With COMPRESSC_NO_JIT=1 a missing kernel stops start-up
with an error naming the variant, the kernel wheel and the `compressc build` command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger("vllm.compressc")
WARMUP_MODULE = "vllm.model_executor.warmup.jit_warmup"
_WEIGHT = {torch.bfloat16: "bf16", torch.float32: "f32"}


@dataclass(frozen=True, slots=True)
class WarmupPlan:
    """What one model configuration launches through compressc."""

    ops: tuple[str, ...]
    weight_dtype: str
    cache_format: str = "fp8_ds_mla"  # the main KV ops' (c4a, c128a)


def plan_for(vllm_config: Any) -> WarmupPlan:
    """The compressc ops a DeepSeek-V4 configuration routes to compressc (none for other models).

    Main KV (C4A on ratio-4 layers, C128A on ratio-128 layers) in the cache format the cache
    dtype selects (`fp8_ds_mla` packed; `auto`/`bfloat16` the full bf16 rows; `fp8`/`fp8_e4m3`
    the full fp8 rows); the fp8 or MXFP4 indexer on ratio-4 layers. The RMSNorm weight has the
    model's dtype (vLLM builds it under that default dtype).
    """
    model = getattr(vllm_config, "model_config", None)
    ratios = compress_ratios(getattr(model, "hf_config", None))
    cache_dtype = getattr(getattr(vllm_config, "cache_config", None), "cache_dtype", None)
    fp4 = indexer_uses_mxfp4(getattr(vllm_config, "attention_config", None))
    fmt = _MAIN_FORMATS.get(cache_dtype)
    wanted = {"c4a": 4 in ratios and fmt is not None, "indexer_fp8": 4 in ratios and not fp4,
              "indexer_mxfp4": 4 in ratios and fp4, "c128a": 128 in ratios and fmt is not None}
    weight = _WEIGHT.get(getattr(model, "dtype", None), "bf16")
    return WarmupPlan(tuple(op for op, want in wanted.items() if want), weight, fmt or "fp8_ds_mla")


# vLLM's cache dtype -> the main KV cache format compressc writes for it (docs/kernels.md §8)
_MAIN_FORMATS = {"fp8_ds_mla": "fp8_ds_mla", "auto": "full_bf16", "bfloat16": "full_bf16",
                 "fp8": "full_fp8", "fp8_e4m3": "full_fp8"}


def compress_ratios(hf_config: Any) -> set[int]:
    """The layers' compress ratios: `compress_ratios` (per layer), or `compress_rates` (by layer
    type) over `layer_types` as in the upstream DeepseekV4Config; empty for other models."""
    listed = getattr(hf_config, "compress_ratios", None)
    if listed is not None:
        return set(listed)
    rates, types = getattr(hf_config, "compress_rates", None), getattr(hf_config, "layer_types", None)
    if not isinstance(rates, dict) or types is None:
        return set()
    return {rates.get(t, 0) for t in types}


def indexer_uses_mxfp4(attention_config: Any) -> bool:
    """Whether the indexer cache is MXFP4: `resolve_indexer_kv_dtype("fp8") == "mxfp4"` (vLLM
    0.34), or the older `use_fp4_indexer_cache` flag."""
    resolve = getattr(attention_config, "resolve_indexer_kv_dtype", None)
    if callable(resolve):
        try:
            return resolve("fp8") == "mxfp4"
        except Exception:  # vLLM rejects the setting itself; its own error comes at model build
            return False
    return bool(getattr(attention_config, "use_fp4_indexer_cache", False))


def preload_for(vllm_config: Any) -> list[str]:
    """Load the kernels of `plan_for(vllm_config)` on the current CUDA device; their variants."""
    from compressc.integrations.vllm import _device_problem
    from compressc.runtime import preload

    plan = plan_for(vllm_config)
    if not plan.ops or not torch.cuda.is_available():
        return []
    device = torch.cuda.current_device()
    problem = _device_problem(device)
    if problem:  # vLLM's own kernels serve every call here: nothing of ours to load
        log.debug("compressc: no kernels preloaded: %s", problem)
        return []
    loaded = preload(plan.ops, weight_dtypes=(plan.weight_dtype,), device=device,
                     cache_format=plan.cache_format)
    _reserve_scratch(vllm_config, plan, device)
    log.info("compressc: %d kernels loaded for warm-up on cuda:%d (%s)", len(loaded), device,
             ", ".join(loaded))
    return loaded


def _reserve_scratch(vllm_config: Any, plan: WarmupPlan, device: int) -> None:
    """C128A's scratch for the largest batch, before vLLM captures CUDA graphs (a capture must
    not allocate it): max_num_batched_tokens rows of 512 fp32."""
    rows = getattr(getattr(vllm_config, "scheduler_config", None), "max_num_batched_tokens", None)
    if "c128a" in plan.ops and isinstance(rows, int) and rows > 0:
        from compressc.runtime import reserve_c128a_scratch

        reserve_c128a_scratch(rows, 512, torch.device("cuda", device))


def join_warmup(module: ModuleType) -> None:
    """Wrap `JitWarmupRegistry.warmup` of vLLM's jit_warmup module (once)."""
    registry = getattr(module, "JitWarmupRegistry", None)
    original = getattr(registry, "warmup", None)
    if original is None or getattr(original, "compressc_joined", False):
        return

    def warmup(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        preload_for(getattr(self, "vllm_config", None))
        return result

    warmup.compressc_joined = True
    warmup.__wrapped__ = original
    registry.warmup = warmup
