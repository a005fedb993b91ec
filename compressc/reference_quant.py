"""The quantisers of each cache format in torch (docs/kernels.md §3.5 and §8), applied to
bf16-valued rows; re-exported by compressc.reference."""

from __future__ import annotations

import torch

from compressc.numerics import (
    FP8_MAX,
    e2m1_encode,
    e4m3_encode,
    inv_scale_from_ue8m0,
    scale_from_ue8m0,
    ue8m0_byte,
)
from compressc.specs import KernelSpec


def quant_ue8m0(spec: KernelSpec, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes uint8[N, C], UE8M0 bytes uint8[N, C / quant_block]) of bf16-valued q.

    raw = max(scale_floor, amax / 448) per block: the floor is on the scale (docs/kernels.md §3.5).
    """
    n, width = q.shape
    blocks = q.reshape(n, width // spec.quant_block, spec.quant_block)
    amax = blocks.abs().amax(dim=-1)
    floor = torch.tensor(spec.scale_floor, dtype=torch.float32, device=q.device)
    e8 = ue8m0_byte(torch.maximum(floor, amax / FP8_MAX))
    codes = e4m3_encode(blocks * inv_scale_from_ue8m0(e8)[..., None])
    return codes.reshape(n, width), e8


def quant_f32scale(spec: KernelSpec, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes uint8[N, C], fp32 scale [N]) with scale = 2^ceil(log2(max(amax, floor) / 448)).

    Here the floor is on amax (docs/kernels.md §4 indexer); the UE8M0 rounding gives the ceil exactly.
    """
    amax = q.abs().amax(dim=-1)
    floor = torch.tensor(spec.scale_floor, dtype=torch.float32, device=q.device)
    e8 = ue8m0_byte(torch.maximum(amax, floor) / FP8_MAX)
    codes = e4m3_encode(q * inv_scale_from_ue8m0(e8)[:, None])
    return codes, scale_from_ue8m0(e8)


def quant_mxfp4(q: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed e2m1 bytes uint8[N, C / 2], UE8M0 bytes uint8[N, C / block]), docs/kernels.md §8:
    amax floored at 6 * 2^-126, times fp32(1/6), the power of two rounded up; values times
    2^(127 - e8) exactly, then to e2m1; element 2j in the low nibble of byte j."""
    n, width = q.shape
    blocks = q.reshape(n, width // block, block)
    floor = torch.tensor(6.0 * 2.0**-126, dtype=torch.float32, device=q.device)
    sixth = torch.tensor(1.0 / 6.0, dtype=torch.float32, device=q.device)
    e8 = ue8m0_byte(torch.maximum(blocks.abs().amax(dim=-1), floor) * sixth)
    nib = e2m1_encode(blocks * inv_scale_from_ue8m0(e8)[..., None]).reshape(n, width)
    return (nib[:, 0::2] | (nib[:, 1::2] << 4)).to(torch.uint8), e8


def quant_tensor(q: torch.Tensor, fp8_scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes of q * RN(1 / fp8_scale[0]) (docs/kernels.md §8: a product, not a division)."""
    inv = 1.0 / fp8_scale.reshape(-1)[:1].to(device=q.device, dtype=torch.float32)
    return e4m3_encode(q * inv)


def hadamard(v: torch.Tensor) -> torch.Tensor:
    """docs/kernels.md §8: for spans S = n/2, ..., 1, each group of 2S values with halves
    (a, b) becomes (a + b, a - b) in fp32; then every value times fp32(n^-1/2)."""
    n, width = v.shape
    span = width // 2
    while span:
        g = v.reshape(n, width // (2 * span), 2, span)
        v = torch.stack((g[:, :, 0] + g[:, :, 1], g[:, :, 0] - g[:, :, 1]), dim=2).reshape(n, width)
        span //= 2
    return v * torch.tensor(width**-0.5, dtype=torch.float32, device=v.device)
