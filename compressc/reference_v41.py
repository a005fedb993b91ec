"""DeepSeek-V4.1's low-ratio compressors (ratio 1 and 2), as far as their rules are confirmed
(docs/kernels.md §11): the pre-RoPE latent, the rope of the fused decode step and the FP4
fake quantisation. Torch, CPU or CUDA. The cache stores (the `V41` / `V41_FP4` byte layouts)
are open and deliberately absent: no compressc kernel writes them.
"""

from __future__ import annotations

import torch

from compressc.numerics import bf16_rne, e2m1_encode, pow2_f32, ue8m0_byte

E2M1_MAX = 6.0
_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def rms_norm_bf16(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with fp32 statistics and an fp32 weight multiply, the result cast to bf16
    (returned as fp32 holding bf16 values)."""
    x = x.float()
    rrms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + torch.tensor(eps, dtype=torch.float32))
    return bf16_rne((x * rrms) * weight.float())


def latent(ratio: int, kv: torch.Tensor, weight: torch.Tensor, eps: float,
           score: torch.Tensor | None = None) -> torch.Tensor:
    """The pre-RoPE latent of ratio-1 or ratio-2 tokens.

    ratio 1: kv [T, head] (bf16 projections), one latent per token: RMSNorm(kv).
    ratio 2: kv, score [2G, head] fp32 for positions 2k, 2k+1 of G groups: per channel a
    softmax over the pair's two scores pools the pair, the fp32 result is cast to bf16,
    then the same RMSNorm: [G, head].
    """
    if ratio == 1:
        return rms_norm_bf16(bf16_rne(kv.float()), weight, eps)
    if ratio != 2:
        raise ValueError(f"ratio={ratio}: DeepSeek-V4.1's low-ratio compressors have ratio 1 or 2")
    if score is None or score.shape != kv.shape or kv.shape[0] % 2:
        raise ValueError("ratio 2 needs kv and score of one shape [2G, head] (pairs of positions 2k, 2k+1)")
    pairs_kv = kv.float().reshape(-1, 2, kv.shape[-1])
    weights = torch.softmax(score.float().reshape(-1, 2, kv.shape[-1]), dim=1)
    pooled = (weights * pairs_kv).sum(dim=1)
    return rms_norm_bf16(bf16_rne(pooled), weight, eps)


def rope_position(ratio: int, position: torch.Tensor) -> torch.Tensor:
    """The position a fused decode step ropes a latent at: the token's (ratio 1) or, for the
    odd position that completes a ratio-2 pair, position - 1."""
    return position if ratio == 1 else position - 1


def fp4_fake_quant(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """The FP4 fake quantisation (values stay fp32): per block of `block` values, amax floored
    at 6 * 2^-126, times fp32(1/6), rounded up to a power of two on its bits (the UE8M0 rule);
    each value divided by that scale, clamped to +-6, rounded to the E2M1 grid half to even,
    multiplied back."""
    n, width = x.shape
    blocks = x.float().reshape(n, width // block, block)
    floor = torch.tensor(E2M1_MAX * 2.0**-126, dtype=torch.float32, device=x.device)
    sixth = torch.tensor(1.0 / E2M1_MAX, dtype=torch.float32, device=x.device)
    e8 = ue8m0_byte(torch.maximum(blocks.abs().amax(dim=-1), floor) * sixth)
    scale = pow2_f32(e8.to(torch.int64) - 127)
    scaled = (blocks / scale[..., None]).clamp(-E2M1_MAX, E2M1_MAX)
    nibble = e2m1_encode(scaled).to(torch.int64)
    grid = torch.tensor(_MAGNITUDES, dtype=torch.float32, device=x.device)
    value = torch.where(nibble >= 8, -grid[nibble & 7], grid[nibble & 7])
    return (value * scale[..., None]).reshape(n, width)
