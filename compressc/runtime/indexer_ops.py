"""The indexer compressor ops (docs/kernels.md §8): the fp8 and MXFP4 indexer caches, rotated
or not; re-exported by compressc.runtime.ops, whose eager path they share."""

from __future__ import annotations

import torch

from compressc.runtime import ops


def compress_indexer_fp8(
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
    head_size: int = 128,
    quant_block: int = 128,
    rotate: bool = False,
) -> None:
    """Indexer KV (ratio 4): like C4A, with one fp32 scale per token (docs/kernels.md §4);
    rotate: the 128-point Hadamard rotation before quantisation (SGLang, TRT-LLM; merged
    vLLM does not rotate)."""
    ops._fused(
        "indexer_fp8", state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
        rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size,
        head_size, quant_block, ("indexer_fp8", bool(rotate)), None,
    )


def compress_indexer_mxfp4(
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
    head_size: int = 128,
    quant_block: int = 32,
    rotate: bool = False,
) -> None:
    """Indexer KV as MXFP4 (docs/kernels.md §8): 64 bytes of e2m1 nibbles and 4 UE8M0 block
    scales per token, k_cache uint8 [pages, B, 68]; on sm_90a too (software e2m1)."""
    ops._fused(
        "indexer_mxfp4", state_cache, token_to_req_indices, positions, slot_mapping, block_table, block_size,
        rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping, kv_cache_block_size,
        head_size, quant_block, ("indexer_mxfp4", bool(rotate)), None,
    )
