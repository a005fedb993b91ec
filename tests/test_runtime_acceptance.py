"""compare_cache_bytes (docs/kernels.md §6) on synthetic byte tensors and on reference output."""

from __future__ import annotations

import pytest
import torch

from compressc.acceptance import compare_cache_bytes, ulp_bf16
from compressc.specs import make_spec

C4A = make_spec("c4a")
INDEXER = make_spec("indexer_fp8")
SENTINEL = 0xA5
B = 64
SLOTS = torch.tensor([3, 70])  # page 0 offset 3, page 1 offset 6


def _cache(spec) -> torch.Tensor:
    """Two poisoned pages whose stride leaves padding after the scales."""
    ts, sd = spec.store.token_stride, spec.store.scale_dim
    stride = -(-B * (ts + sd) // ts) * ts
    return torch.full((2, B, stride // B), SENTINEL, dtype=torch.uint8)


def _fill(spec, cache: torch.Tensor) -> torch.Tensor:
    """Write plausible token bytes for SLOTS (codes, bf16 rope, scales, pad)."""
    gen = torch.Generator().manual_seed(1)
    flat = cache.view(-1)
    ts, sd, stride = spec.store.token_stride, spec.store.scale_dim, cache.stride(0)
    for slot in SLOTS.tolist():
        base, off = (slot // B) * stride, slot % B
        values = torch.randint(0, 0x7E, (ts,), generator=gen, dtype=torch.uint8)
        values |= torch.randint(0, 2, (ts,), generator=gen, dtype=torch.uint8) << 7
        if spec.store.name == "fp8_ds_mla":
            rope = torch.randn(spec.rope, generator=gen).to(torch.bfloat16)
            values[spec.nope :] = rope.view(torch.uint8)
        flat[base + off * ts : base + (off + 1) * ts] = values
        scales = torch.full((sd,), 0, dtype=torch.uint8)
        scales[: sd - 1] = torch.randint(110, 130, (sd - 1,), generator=gen, dtype=torch.uint8)
        flat[base + B * ts + off * sd : base + B * ts + (off + 1) * sd] = scales
    return cache


@pytest.fixture
def pair():
    want = _fill(C4A, _cache(C4A))
    return want.clone(), want


def _byte(cache: torch.Tensor, slot: int, offset: int, *, scale: bool = False) -> int:
    """Flat index of a token's value byte (or scale byte)."""
    ts, sd = C4A.store.token_stride, C4A.store.scale_dim
    base, off = (slot // B) * cache.stride(0), slot % B
    return base + B * ts + off * sd + offset if scale else base + off * ts + offset


def test_identical_caches_pass(pair):
    got, want = pair
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.ok and report.failures == 0
    assert (report.tokens, report.codes, report.rope_values, report.code_steps) == (2, 2 * 448, 2 * 64, 0)
    assert report.bytes_compared == got.numel()


@pytest.mark.parametrize(
    "want_code,got_code", [(0x30, 0x31), (0xB1, 0xB0), (0x00, 0x80), (0x80, 0x01), (0x01, 0x00)]
)
def test_one_step_code_passes_and_is_counted(pair, want_code, got_code):
    got, want = pair
    i = _byte(want, 70, 5)
    want.view(-1)[i], got.view(-1)[i] = want_code, got_code
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.ok and report.code_steps == 1 and report.rare_fraction == 1 / 896


@pytest.mark.parametrize("want_code,got_code", [(0x30, 0x32), (0x01, 0x81), (0x7E, 0x7F), (0x30, 0xB0)])
def test_larger_or_nan_code_changes_fail(pair, want_code, got_code):
    got, want = pair
    i = _byte(want, 3, 447)
    want.view(-1)[i], got.view(-1)[i] = want_code, got_code
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.code_failures == 1 and not report.ok
    assert f"slot 3 fp8 code 447: got {got_code:#04x}, want {want_code:#04x}" in str(report)


def test_one_step_under_a_different_scale_fails(pair):
    got, want = pair
    code = _byte(want, 3, 64 * 2 + 7)  # quant block 2
    got.view(-1)[code] = (
        want.view(-1)[code] ^ 1 if want.view(-1)[code] & 0x7F < 0x7E else want.view(-1)[code] - 1
    )
    got.view(-1)[_byte(want, 3, 2, scale=True)] += 1
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.scale_mismatches == 1 and report.code_failures == 1 and report.code_steps == 0


@pytest.mark.parametrize("spec", [C4A, INDEXER], ids=lambda s: s.variant)
def test_no_active_tokens(spec):
    want = _fill(spec, _cache(spec))
    got = want.clone()
    report = compare_cache_bytes(spec, got, want, torch.empty(0, dtype=torch.int64))
    assert report.ok and report.tokens == 0 and report.codes == 0
    got.view(-1)[3] ^= 1
    assert compare_cache_bytes(spec, got, want, torch.empty(0, dtype=torch.int64)).outside_mismatches == 1


def test_padding_slots_are_not_tokens():
    want = _fill(C4A, _cache(C4A))
    got = want.clone()
    got.view(-1)[-1] ^= 1  # the last byte of the storage: where slot -1 would wrap to
    report = compare_cache_bytes(C4A, got, want, torch.tensor([-1, -1]))
    assert report.tokens == 0 and report.outside_mismatches == 1 and not report.ok


def test_changed_sentinel_fails(pair):
    got, want = pair
    got.view(-1)[_byte(want, 5, 0)] = 0  # slot 5 is not active: its bytes keep the sentinel
    got.view(-1)[-1] = 0  # page padding after the last scale
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.outside_mismatches == 2 and report.failures == 2
    assert f"byte {_byte(want, 5, 0)} outside the active tokens: got 0x00, want 0xa5" in str(report)


def test_changed_scale_byte_fails(pair):
    got, want = pair
    got.view(-1)[_byte(want, 70, 6, scale=True)] += 1
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.scale_mismatches == 1 and not report.ok
    assert "slot 70 scale byte 6" in str(report)


def test_changed_pad_byte_fails(pair):
    got, want = pair
    got.view(-1)[_byte(want, 70, 7, scale=True)] = 1
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.pad_mismatches == 1 and "slot 70 scale pad byte 0" in str(report)


def _set_rope(cache: torch.Tensor, slot: int, j: int, values: tuple[float, float]) -> None:
    i = _byte(cache, slot, C4A.nope + 4 * j)
    cache.view(-1)[i : i + 4] = torch.tensor(values, dtype=torch.bfloat16).view(torch.uint8)


@pytest.mark.parametrize(
    "want_pair,got_pair,ok",
    [
        ((1.0, 0.5), (1.0 + 2 * 2**-7, 0.5), True),  # 2 ulp of the pair magnitude 1.0
        ((1.0, 0.5), (1.0 + 3 * 2**-7, 0.5), False),  # 3 ulp
        ((1.0, 2**-20), (1.0, 2**-20 + 2**-6), True),  # near-zero partner judged by the pair's scale
        ((1.0, 2**-20), (1.0, 2**-20 + 3 * 2**-7), False),
    ],
)
def test_rope_tolerance_is_two_ulp_of_the_pair(pair, want_pair, got_pair, ok):
    got, want = pair
    _set_rope(want, 3, 5, want_pair)
    _set_rope(got, 3, 5, got_pair)
    report = compare_cache_bytes(C4A, got, want, SLOTS)
    assert report.ok is ok and report.rope_differ + report.rope_failures == 1


def test_ulp_bf16():
    got = ulp_bf16(torch.tensor([1.0, 1.5, 2.0, 0.75, 0.0]))
    assert got.tolist() == [2**-7, 2**-7, 2**-6, 2**-8, 2**-133]


def test_indexer_layout():
    want = _fill(INDEXER, _cache(INDEXER))
    got = want.clone()
    ts, sd = INDEXER.store.token_stride, INDEXER.store.scale_dim
    flat = got.view(-1)
    code = 3 * ts + 100
    flat[code] = flat[code] + 1 if flat[code] & 0x7F < 0x7E else flat[code] - 1
    report = compare_cache_bytes(INDEXER, got, want, SLOTS)
    assert report.ok and report.code_steps == 1 and report.codes == 2 * 128 and report.rope_values == 0
    flat[B * ts + 3 * sd + 3] ^= 0x40  # a byte of slot 3's fp32 scale
    report = compare_cache_bytes(INDEXER, got, want, SLOTS)
    assert report.scale_mismatches == 1 and report.code_failures == 1


def test_layout_errors(pair):
    got, want = pair
    with pytest.raises(TypeError, match="got must be a uint8 k_cache, got torch.int8"):
        compare_cache_bytes(C4A, got.view(torch.int8), want, SLOTS)
    with pytest.raises(ValueError, match=r"got and want differ in layout: shape \(2, 64, 585\)"):
        compare_cache_bytes(C4A, got, want.view(2, 585, 64), SLOTS)
    with pytest.raises(ValueError, match="c128a_compress_h512_q64_r64_f32 stores no quantised cache tokens"):
        compare_cache_bytes(make_spec("c128a_compress", weight_dtype="f32"), got, want, SLOTS)


def test_reference_output_against_itself_with_a_perturbed_code():
    from compressc import scenarios

    sc = scenarios.make_scenario(C4A, "mixed", 64, seed=3)
    want = sc.run_reference()
    got = sc.run_reference()
    slots = sc.kv_slot_mapping[sc.active()]
    assert compare_cache_bytes(C4A, got, want, slots).ok
    stray = sc.kv_slot_mapping[~sc.active() & (sc.kv_slot_mapping >= 0)]
    assert stray.numel() > 0  # colliding non-boundary rows exist, and their slots are active ones
    page = int(slots[0]) // B * got.stride(0)
    got.view(-1)[page + (int(slots[0]) % B) * 576 + 1] ^= 0x02
    assert compare_cache_bytes(C4A, got, want, slots).code_failures == 1
