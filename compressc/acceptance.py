"""docs/kernels.md §6 acceptance: compare a kernel's compressed-KV cache bytes with the reference's.

Pure torch (CPU or CUDA tensors). `compare_cache_bytes` splits the cache storage into
the bytes the active tokens own (values and scales, docs/kernels.md §4) and everything else:

- every byte outside the active tokens (sentinel, padding, other pages) must be equal;
- scale bytes and pad bytes must be equal;
- an fp8 code may differ from the reference by one step (adjacent e4m3 values, never
  a NaN code) under an equal scale; such codes are counted as rare steps. -0 and +0
  count as adjacent to the smallest subnormals of either sign, so a tiny value whose
  sign flips by summation order is one step;
- a rope bf16 value may differ by at most 2 ulp of its pair's magnitude,
  |got - want| <= 2 * ulp_bf16(max(|a|, |b|)) over the reference pair (a, b) (a full bf16
  row: every value);
- a rotated indexer's e4m3 code may differ by more than one step where the dequantised
  values differ by at most one bf16 ulp of the full scale (448 * 2^-7): one value moved by
  a bf16 step before the rotation moves every value of its token (docs/kernels.md §8);
  e2m1 codes (MXFP4) by one step, like e4m3 codes.
Anything else is a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from compressc.numerics import e4m3_decode
from compressc.specs.family import KernelSpec

_E4M3_NAN = 0x7F  # e4m3fn: 0x7F and 0xFF are NaN; a satfinite kernel never writes them
_FULL_SCALE_ULP = 448.0 * 2.0**-7  # one bf16 ulp at the top of the scaled e4m3 range
_BF16_MIN_NORMAL_EXP = -126
_BF16_MANT_BITS = 7
_MAX_EXAMPLES = 8


@dataclass
class Report:
    """Counts of one comparison; `failures` must be 0 for a correct kernel."""

    tokens: int = 0
    bytes_compared: int = 0
    outside_mismatches: int = 0
    scale_mismatches: int = 0
    pad_mismatches: int = 0
    codes: int = 0
    code_steps: int = 0
    code_failures: int = 0
    rope_values: int = 0
    rope_differ: int = 0
    rope_failures: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return (
            self.outside_mismatches
            + self.scale_mismatches
            + self.pad_mismatches
            + self.code_failures
            + self.rope_failures
        )

    @property
    def ok(self) -> bool:
        return self.failures == 0

    @property
    def rare_fraction(self) -> float:
        """Fraction of fp8 codes that are one step off the reference."""
        return self.code_steps / self.codes if self.codes else 0.0

    def __str__(self) -> str:
        head = (
            f"{self.tokens} tokens, {self.bytes_compared} bytes: {self.failures} failures "
            f"(outside {self.outside_mismatches}, scale {self.scale_mismatches}, pad {self.pad_mismatches}, "
            f"codes {self.code_failures}, rope {self.rope_failures}); rare fp8 steps {self.code_steps}/"
            f"{self.codes}, rope within 2 ulp {self.rope_differ}/{self.rope_values}"
        )
        return "\n  ".join([head, *self.examples])


@dataclass(frozen=True)
class _Layout:
    """Where each kind of byte sits inside one token's value and scale regions."""

    codes: int  # leading value bytes that are codes (e4m3 bytes, or e2m1 nibble pairs)
    rope: int  # bf16 values after the codes (the full bf16 cache: every channel)
    scales: int  # leading scale bytes that are scales (the rest is pad)
    block: int  # code bytes that share one scale
    scale_bytes_per_group: int  # 1 for a UE8M0 byte, 4 for an fp32 scale
    codec: str = "e4m3"
    rotated: bool = False  # the indexer's Hadamard rotation: see _codes


def _layout(spec: KernelSpec) -> _Layout:
    name = spec.cache_format
    if name == "fp8_ds_mla":
        return _Layout(spec.nope, spec.rope, spec.nope // spec.quant_block, spec.quant_block, 1)
    if name == "indexer_fp8":
        return _Layout(spec.head, 0, 4, spec.head, 4, rotated=spec.rotate)
    if name == "indexer_mxfp4":
        return _Layout(spec.head // 2, 0, spec.head // 32, 16, 1, "e2m1", spec.rotate)
    if name == "full_bf16":
        return _Layout(0, spec.head, 0, 1, 1)
    if name == "full_fp8":  # one per-tensor scale, not in the cache: every code under the same scale
        return _Layout(spec.head, 0, 0, spec.head, 1)
    store = spec.store and spec.store.name
    raise ValueError(f"{spec.variant} stores no quantised cache tokens (store {store!r})")


def compare_cache_bytes(
    spec: KernelSpec,
    got: torch.Tensor,
    want: torch.Tensor,
    kv_slots_active: torch.Tensor,
    *,
    kv_cache_block_size: int | None = None,
) -> Report:
    """Compare two k_cache tensors (whole storage from their first byte) per docs/kernels.md §6.

    kv_slots_active: the kv slots the launch's active rows write; negative slots (vLLM's
    padding, never written) are ignored, so their bytes must keep the sentinel.
    kv_cache_block_size defaults to got.shape[1] (k_cache is [num_pages, B, bytes]).
    """
    _check_pair(got, want)
    layout = _layout(spec)
    B = int(kv_cache_block_size if kv_cache_block_size is not None else got.shape[1])
    flat_got, flat_want = _flat(got), _flat(want)
    slots = torch.unique(kv_slots_active.to(device=got.device, dtype=torch.int64))
    slots = slots[slots >= 0]
    row_stride = got.stride(1) if got.dim() >= 3 else 0
    vidx, sidx = _token_spans(spec, slots, B, got.stride(0), row_stride)
    report = Report(tokens=int(slots.numel()), bytes_compared=int(flat_got.numel()))
    _outside(report, flat_got, flat_want, vidx, sidx)
    scale_eq = _scales(report, layout, flat_got[sidx], flat_want[sidx], slots)
    values_got, values_want = flat_got[vidx], flat_want[vidx]
    _codes(report, layout, values_got[:, : layout.codes], values_want[:, : layout.codes], scale_eq, slots)
    rope_end = layout.codes + 2 * layout.rope
    _rope(report, values_got[:, layout.codes : rope_end], values_want[:, layout.codes : rope_end], slots)
    pad = values_got[:, rope_end:] != values_want[:, rope_end:]
    report.pad_mismatches += int(pad.sum())
    _example(report, pad, slots, "value pad byte", values_got[:, rope_end:], values_want[:, rope_end:])
    return report


def allowed_steps(spec: KernelSpec, report: Report) -> float:
    """How many rare one-step codes a correct kernel may show: 1 in 10,000 codes (at least one),
    and for a rotated indexer up to a whole token's codes per 1,000 tokens (one value moved
    before the rotation moves every code of its token)."""
    budget = max(1.0, 1e-4 * report.codes)
    if spec.rotate:
        budget = max(budget, spec.head * max(1.0, 1e-3 * report.tokens))
    return budget


def _check_pair(got: torch.Tensor, want: torch.Tensor) -> None:
    for name, t in (("got", got), ("want", want)):
        if t.dtype != torch.uint8:
            raise TypeError(f"{name} must be a uint8 k_cache, got {t.dtype}")
    if got.shape != want.shape or got.stride() != want.stride():
        raise ValueError(
            f"got and want differ in layout: shape {tuple(got.shape)} strides {got.stride()} vs "
            f"shape {tuple(want.shape)} strides {want.stride()}"
        )


def _flat(k_cache: torch.Tensor) -> torch.Tensor:
    """Every byte of k_cache's storage from its first element on (padding between pages too)."""
    extent = k_cache.untyped_storage().nbytes() - k_cache.storage_offset()
    return k_cache.as_strided((extent,), (1,))


def _token_spans(
    spec: KernelSpec, slots: torch.Tensor, B: int, page_stride: int, row_stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte indices [N, token_stride] of each slot's values and [N, scale_dim] of its scales."""
    ts, sd = spec.store.token_stride, spec.store.scale_dim
    base = (slots // B) * page_stride
    off = slots % B
    rows = row_stride if spec.format is not None and spec.format.row_stride == "runtime" else ts
    vidx = (base + off * rows)[:, None] + torch.arange(ts, device=slots.device)
    sidx = (base + B * ts + off * sd)[:, None] + torch.arange(sd, device=slots.device)
    return vidx, sidx


def _outside(
    report: Report, got: torch.Tensor, want: torch.Tensor, vidx: torch.Tensor, sidx: torch.Tensor
) -> None:
    outside = torch.ones_like(got, dtype=torch.bool)
    outside[vidx.reshape(-1)] = False
    outside[sidx.reshape(-1)] = False
    bad = (got != want) & outside
    report.outside_mismatches = int(bad.sum())
    if report.outside_mismatches:
        i = int(bad.nonzero()[0, 0])
        report.examples.append(
            f"byte {i} outside the active tokens: got {int(got[i]):#04x}, want {int(want[i]):#04x}"
        )


def _scales(
    report: Report, layout: _Layout, got: torch.Tensor, want: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """Count scale and scale-pad mismatches; return bool [N, groups]: the group's scale is equal."""
    n_scale = layout.scales
    bad_scale = got[:, :n_scale] != want[:, :n_scale]
    bad_pad = got[:, n_scale:] != want[:, n_scale:]
    report.scale_mismatches += int(bad_scale.sum())
    report.pad_mismatches += int(bad_pad.sum())
    _example(report, bad_scale, slots, "scale byte", got[:, :n_scale], want[:, :n_scale])
    _example(report, bad_pad, slots, "scale pad byte", got[:, n_scale:], want[:, n_scale:])
    per_group = layout.scale_bytes_per_group
    if n_scale == 0:  # no scales in the cache (a per-tensor scale): every code under the same one
        return torch.ones(got.shape[0], 1, dtype=torch.bool, device=got.device)
    groups = bad_scale.reshape(bad_scale.shape[0], n_scale // per_group, per_group).any(dim=-1)
    return ~groups


def _codes(
    report: Report,
    layout: _Layout,
    got: torch.Tensor,
    want: torch.Tensor,
    scale_eq: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    if layout.codec == "e2m1":  # two nibbles a byte: compare each as a code of its own
        got, want = _nibbles(got), _nibbles(want)
    differ = got != want
    step = (_ordinal(got, layout.codec) - _ordinal(want, layout.codec)).abs() <= 1
    if layout.rotated and layout.codec == "e4m3":
        # a value that moves by one bf16 step before the rotation moves every value of its
        # token by ulp / sqrt(128): near zero that is several e4m3 steps. Allowed: at most one
        # bf16 ulp of the full scale (448 * 2^-7) between the two dequantised codes
        gap = (e4m3_decode(got).double() - e4m3_decode(want).double()).abs()
        step = step | (gap <= _FULL_SCALE_ULP)
    not_nan = ((got & 0x7F) != _E4M3_NAN) & ((want & 0x7F) != _E4M3_NAN) if layout.codec == "e4m3" else True
    block = layout.block * (2 if layout.codec == "e2m1" else 1)
    under_equal_scale = scale_eq.repeat_interleave(block, dim=1) if scale_eq.shape[1] > 1 else scale_eq
    rare = differ & step & not_nan & under_equal_scale
    bad = differ & ~rare
    report.codes += int(got.numel())
    report.code_steps += int(rare.sum())
    report.code_failures += int(bad.sum())
    _example(report, bad, slots, "fp8 code", got, want)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 2C] nibbles of [N, C] bytes, the low nibble (the even element) first."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(packed.shape[0], 2 * packed.shape[1])


def _ordinal(codes: torch.Tensor, codec: str = "e4m3") -> torch.Tensor:
    """Position of each code in value order (sign-magnitude -> signed integer)."""
    sign = 0x8 if codec == "e2m1" else 0x80
    mag = (codes & (sign - 1)).to(torch.int16)
    return torch.where(codes >= sign, -mag, mag)


def _rope(report: Report, got: torch.Tensor, want: torch.Tensor, slots: torch.Tensor) -> None:
    if got.shape[1] == 0:
        return
    g = got.contiguous().view(torch.bfloat16).double()
    w = want.contiguous().view(torch.bfloat16).double()
    differ = got.contiguous().view(torch.int16) != want.contiguous().view(torch.int16)
    pair_mag = torch.maximum(w[:, 0::2].abs(), w[:, 1::2].abs()).repeat_interleave(2, dim=1)
    close = (g - w).abs() <= 2 * ulp_bf16(pair_mag)
    bad = differ & ~close
    report.rope_values += int(differ.numel())
    report.rope_differ += int((differ & close).sum())
    report.rope_failures += int(bad.sum())
    _example(report, bad, slots, "rope bf16 value", g, w)


def ulp_bf16(magnitude: torch.Tensor) -> torch.Tensor:
    """bf16 unit in the last place at |x| (float64): 2^(floor(log2 |x|) - 7), subnormals 2^-133."""
    x = torch.clamp(magnitude.double().abs(), min=2.0**_BF16_MIN_NORMAL_EXP)
    _, exp = torch.frexp(x)  # x = m * 2^exp with m in [0.5, 1): floor(log2 x) = exp - 1
    return torch.ldexp(torch.ones_like(x), (exp - 1 - _BF16_MANT_BITS).double())


def _example(
    report: Report, bad: torch.Tensor, slots: torch.Tensor, what: str, got: torch.Tensor, want: torch.Tensor
) -> None:
    if len(report.examples) >= _MAX_EXAMPLES or not bool(bad.any()):
        return
    row, col = (int(i) for i in bad.nonzero()[0])
    report.examples.append(
        f"slot {int(slots[row])} {what} {col}: got {_show(got[row, col])}, want {_show(want[row, col])}"
    )


def _show(value: torch.Tensor) -> str:
    return f"{int(value):#04x}" if value.dtype == torch.uint8 else f"{float(value)!r}"
