"""Bit-exact rounding rules of docs/kernels.md §3 steps 5-6, in a torch and a NumPy flavour.

The torch functions back the reference emulation (`compressc.reference`); the NumPy
ones back the IR interpreter. Both flavours must agree bit for bit, which
`tests/test_numerics.py` checks on random and edge-case inputs.

Formats:
- bf16: round-to-nearest-even of the fp32 bit pattern to its upper 16 bits.
- e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, max 448,
  smallest subnormal 2^-9; 0x7F / 0xFF are NaN. We encode *satfinite*: |x| > 448
  (including inf) becomes +-448.
- UE8M0: an unsigned power-of-two exponent byte, value 2^(e8 - 127).
- e2m1 (MXFP4 element, docs/kernels.md §8): 1 sign bit (bit 3) and a magnitude code 0..7
  for {0, 0.5, 1, 1.5, 2, 3, 4, 6}; RNE with ties to the even code, saturating at 6; the
  sign bit is the fp32 sign bit, so -0.0 and negatives that round to zero give 0x8.
"""

from __future__ import annotations

import numpy as np
import torch

FP8_MAX = 448.0
# Smallest normal e4m3 exponent; subnormals share its step 2^(-6-3) = 2^-9.
_E4M3_MIN_EXP = -6
_E4M3_MANT_BITS = 3


# -- NumPy flavour ------------------------------------------------------------------
def np_bf16_rne(x: np.ndarray) -> np.ndarray:
    """Round fp32 values to bf16 (nearest, ties to even); returned as fp32."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) & 0xFFFF0000).astype(np.uint32)
    # A NaN must stay NaN even if its payload sits only in the dropped low bits.
    quiet = ((bits | 0x00400000) & 0xFFFF0000).astype(np.uint32)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, quiet, rounded).view(np.float32)


def np_e4m3_encode(x: np.ndarray) -> np.ndarray:
    """Encode fp32 values as e4m3fn codes: RNE, satfinite at +-448, -0.0 -> 0x80.

    Works in float64, where every step below is exact: clamp |x| to 448, take the
    binade exponent e (at least -6, so subnormals share the 2^-9 step), count steps
    n = rint(|x| / 2^(e-3)) (rint is ties-to-even), and code = (e + 6) * 8 + n. A
    mantissa that rounds up to 16 steps carries into the exponent field by itself.
    """
    x32 = np.asarray(x, dtype=np.float32)
    sign = (x32.view(np.uint32) >> 31).astype(np.uint8)
    mag = np.minimum(np.abs(x32.astype(np.float64)), FP8_MAX)
    mag = np.where(np.isnan(mag), 0.0, mag)
    _, exp = np.frexp(mag)  # mag = f * 2^exp with f in [0.5, 1)
    # frexp(0) reports exponent 0; zero belongs to the subnormal binade.
    e = np.where(mag == 0.0, _E4M3_MIN_EXP, np.maximum(exp.astype(np.int64) - 1, _E4M3_MIN_EXP))
    steps = np.rint(np.ldexp(mag, -(e - _E4M3_MANT_BITS)))
    code = ((e + 6) * 8 + steps.astype(np.int64)).astype(np.uint8)
    code = np.where(np.isnan(x32), np.uint8(0x7F), code)
    return (code | (sign << 7)).astype(np.uint8)


def np_e4m3_decode(code: np.ndarray) -> np.ndarray:
    """Value of e4m3fn codes as fp32 (NaN for 0x7F/0xFF)."""
    c = np.asarray(code, dtype=np.uint8).astype(np.int64)
    exp_field, mant = (c >> 3) & 0xF, c & 7
    normal = np.ldexp(1.0 + mant / 8.0, exp_field - 7)
    sub = np.ldexp(mant.astype(np.float64), -9)
    mag = np.where(exp_field == 0, sub, normal)
    mag = np.where((c & 0x7F) == 0x7F, np.nan, mag)
    return np.where(c >> 7 == 1, -mag, mag).astype(np.float32)


def np_ue8m0_byte(raw: np.ndarray) -> np.ndarray:
    """UE8M0 byte of a positive fp32 scale, rounded up to a power of two (docs/kernels.md §3.5)."""
    bits = np.asarray(raw, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (((bits + 0x7FFFFF) >> 23) & 0xFF).astype(np.uint8)


def np_pow2_from_ue8m0(e8: np.ndarray) -> np.ndarray:
    """Inverse scale 2^(127 - e8) as fp32; exact (2^-128 is an fp32 subnormal)."""
    k = 127 - np.asarray(e8, dtype=np.int64)
    return np.ldexp(np.ones(k.shape, dtype=np.float64), k).astype(np.float32)


# |x| thresholds of e2m1 codes 1..7, and whether reaching the threshold exactly counts (the
# ties that go to the upper, even code)
_E2M1_THRESHOLDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True),
                    (5.0, False))
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def np_e2m1_encode(x: np.ndarray) -> np.ndarray:
    """e2m1 nibbles (uint8 0..15) of fp32 values by the threshold rule the kernels use."""
    x32 = np.asarray(x, dtype=np.float32)
    mag = np.abs(x32)
    code = np.zeros(x32.shape, dtype=np.uint8)
    for t, inclusive in _E2M1_THRESHOLDS:
        code += (mag >= t) if inclusive else (mag > t)
    return (code | ((x32.view(np.uint32) >> 28) & 8).astype(np.uint8)).astype(np.uint8)


# -- torch flavour ------------------------------------------------------------------
def bf16_rne(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 to bf16 (torch's cast is RNE on CPU and CUDA); returned as fp32."""
    return x.float().to(torch.bfloat16).float()


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """e4m3fn codes (uint8) of fp32 values: satfinite clamp, then torch's RNE cast."""
    clamped = x.float().clamp(-FP8_MAX, FP8_MAX)
    return clamped.to(torch.float8_e4m3fn).view(torch.uint8)


def e4m3_decode(code: torch.Tensor) -> torch.Tensor:
    """fp32 value of e4m3fn codes."""
    return code.view(torch.float8_e4m3fn).float()


def ue8m0_byte(raw: torch.Tensor) -> torch.Tensor:
    """UE8M0 byte ((bits(raw) + 0x7FFFFF) >> 23) & 0xFF of a positive fp32 scale."""
    bits = raw.float().contiguous().view(torch.int32).to(torch.int64)
    return (((bits + 0x7FFFFF) >> 23) & 0xFF).to(torch.uint8)


def inv_scale_from_ue8m0(e8: torch.Tensor) -> torch.Tensor:
    """2^(127 - e8) as fp32, exactly."""
    return pow2_f32(127 - e8.to(torch.int64))


def scale_from_ue8m0(e8: torch.Tensor) -> torch.Tensor:
    """2^(e8 - 127) as fp32, the dequantisation scale of a UE8M0 byte (e8 = 255 gives inf)."""
    return pow2_f32(e8.to(torch.int64) - 127)


def pow2_f32(k: torch.Tensor) -> torch.Tensor:
    """2^k as fp32 for integer k in [-149, 128], built from its bit pattern.

    Bits rather than pow/ldexp, so no device math library (or flush-to-zero of the
    subnormals 2^-127 and 2^-128 that e8 = 254, 255 need) can change the result.
    """
    k = k.to(torch.int64)
    normal = (k + 127).clamp(min=0) << 23
    subnormal = torch.ones_like(k) << (k + 149).clamp(min=0, max=22)
    bits = torch.where(k >= -126, normal, subnormal)
    return bits.to(torch.int32).view(torch.float32)


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """e2m1 nibbles (uint8 0..15) of fp32 values: the nearest of the eight magnitudes, a tie
    to the even code, |x| above 6 saturating; the sign bit from x's fp32 sign bit."""
    x = x.float()
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float64, device=x.device)
    mag = x.abs().double().clamp(max=6.0)[..., None]
    dist = (mag - grid).abs()
    best = dist.min(dim=-1, keepdim=True).values
    codes = torch.arange(8, device=x.device)
    # among the nearest codes (two at a tie) the even one: ties go to even, lone codes stand
    tie_even = torch.where(dist == best, torch.where(codes % 2 == 0, codes, codes + 8), 99)
    code = tie_even.min(dim=-1).values % 8
    sign = (x.contiguous().view(torch.int32) < 0).to(torch.int64) * 8
    return (code + sign).to(torch.uint8)


def e2m1_decode(nibble: torch.Tensor) -> torch.Tensor:
    """fp32 value of e2m1 nibbles."""
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=nibble.device)
    n = nibble.to(torch.int64)
    mag = grid[n & 7]
    return torch.where(n & 8 != 0, -mag, mag)
