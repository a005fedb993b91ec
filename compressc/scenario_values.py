"""The value tensors of a scenario (compressc.scenarios): weights, state rows, the rope table
and cache pages of each layout."""

from __future__ import annotations

import torch

from compressc.specs import KernelSpec

ROPE_BASE = 10000.0
_STATE_CHUNK_PAGES = 4096  # bounds the host copy when filling a large device state cache


def _tensors(spec: KernelSpec, rows: dict, gen: torch.Generator, weight_dtype: str, tiny: bool) -> dict:
    """Every Scenario field except spec, kind and state_cache, on the CPU."""
    B = _kv_page(spec)
    weight = 1.0 + 0.3 * torch.randn(spec.head, generator=gen)
    if tiny and not _shrinks_kv(spec):
        weight = weight * 1e-5  # the indexer's one block is the normed head: shrink gamma
    compressed = _nonzero(
        torch.randn(len(rows["slot_mapping"]), spec.head, generator=gen), _channel_scale(spec, gen)
    )
    if tiny and _shrinks_kv(spec):
        compressed[:, _tiny_block_cols(spec)] *= 1e-4
    stride = page_bytes(spec, B)
    shape = (B, stride // B) if stride % B == 0 else (stride,)
    k_cache = torch.zeros((rows["num_pages"], *shape), dtype=torch.uint8)
    return {
        "token_to_req_indices": rows["token_to_req_indices"],
        "positions": rows["positions"],
        "slot_mapping": rows["slot_mapping"],
        "block_table": rows["block_table"],
        "block_size": _state_page(spec),
        "kv_block_table": rows["kv_block_table"],
        "rms_norm_weight": weight.to(torch.bfloat16 if weight_dtype == "bf16" else torch.float32),
        "rms_norm_eps": 1e-6,
        "cos_sin_cache": cos_sin_cache(spec.rope, int(rows["positions"].max()) + 1),
        "k_cache": k_cache,
        "kv_slot_mapping": rows["kv_slot_mapping"],
        "kv_cache_block_size": B,
        "compressed_kv": compressed,
    }


def _state_cache(
    spec: KernelSpec, pages: int, gen: torch.Generator, tiny: bool, device: str | torch.device
) -> torch.Tensor:
    """[pages, Bs, 2*SW] fp32: kv ~ N(0, 1) with per-channel spread, score ~ N(0, 2^2)."""
    head, sw = spec.head, spec.state_width
    col = torch.full((2 * sw,), 2.0)
    streams = 1 + int(spec.overlap)
    col[:sw] = torch.cat([_channel_scale(spec, gen) for _ in range(streams)])
    if tiny and _shrinks_kv(spec):
        for s in range(streams):
            col[s * head : (s + 1) * head][_tiny_block_cols(spec)] *= 1e-4
    out = torch.empty((pages, _state_page(spec), 2 * sw), dtype=torch.float32, device=device)
    for lo in range(0, pages, _STATE_CHUNK_PAGES):
        n = min(_STATE_CHUNK_PAGES, pages - lo)
        out[lo : lo + n] = _nonzero(torch.randn((n, *out.shape[1:]), generator=gen), col).to(device)
    return out


def _nonzero(normal: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """normal * scale in place, with the rare exact 0.0 of torch.randn (about 1 in 25M) set to 1.

    docs/kernels.md §6 asks for data that is never zero, so a kernel that skips a row cannot pass.
    """
    return normal.masked_fill_(normal == 0, 1.0).mul_(scale)


def _channel_scale(spec: KernelSpec, gen: torch.Generator) -> torch.Tensor:
    """Per-channel magnitudes spread over about two octaves so block scales differ."""
    return torch.exp(0.5 * torch.randn(spec.head, generator=gen))


def _shrinks_kv(spec: KernelSpec) -> bool:
    """Shrinking one block of kv works only when RMSNorm sees other, normal-sized blocks."""
    return spec.quant_block < spec.head


def _tiny_block_cols(spec: KernelSpec) -> slice:
    """Channels of the quant block that `tiny_block` shrinks (block 1, inside the nope part)."""
    b = 1 if spec.nope >= 2 * spec.quant_block else 0
    return slice(b * spec.quant_block, (b + 1) * spec.quant_block)


def cos_sin_cache(rope: int, max_pos: int, base: float = ROPE_BASE) -> torch.Tensor:
    """fp32 [max_pos, rope]: row P = [cos(theta_j P)..., sin(theta_j P)...], theta_j = base^(-2j/rope)."""
    theta = base ** (-torch.arange(0, rope, 2, dtype=torch.float64) / rope)
    angle = torch.arange(max_pos, dtype=torch.float64)[:, None] * theta
    return torch.cat((angle.cos(), angle.sin()), dim=1).float()


def page_bytes(spec: KernelSpec, block: int) -> int:
    """Compressed page stride: values + scales rounded up (to 576 for fp8_ds_mla, 16 otherwise)."""
    store = spec.store
    need = block * (store.token_stride + store.scale_dim)
    unit = store.token_stride if store.name == "fp8_ds_mla" else 512 if store.scale_dim == 0 else 16
    return -(-need // unit) * unit


def _state_page(spec: KernelSpec) -> int:
    return 4 if spec.ratio == 4 else 8


def _kv_page(spec: KernelSpec) -> int:
    return 64 if spec.ratio == 4 else 2
