"""NumPy and torch rounding rules agree bit for bit, and both match hand-derived codes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compressc import numerics as nx


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _from_bits(bits) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _random_f32(n: int, seed: int, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mag = np.exp2(rng.uniform(lo, hi, n))
    return _f32(rng.choice([-1.0, 1.0], n) * mag * rng.uniform(1.0, 2.0, n))


def _e4m3_table() -> tuple[np.ndarray, np.ndarray]:
    """All 127 non-negative finite e4m3fn codes and their values, decoded by the format rule."""
    codes = np.arange(0x7F)
    exp_field, mant = codes >> 3, codes & 7
    values = np.where(exp_field == 0, mant * 2.0**-9, (1 + mant / 8) * 2.0 ** (exp_field - 7.0))
    return codes, values


def _e4m3_by_table(x: float) -> int:
    """Nearest code by exhaustive search; ties go to the even code (even mantissa)."""
    codes, values = _e4m3_table()
    mag = min(abs(x), 448.0)
    dist = np.abs(values - mag)
    best = codes[dist == dist.min()]
    code = int(best[best % 2 == 0][0]) if len(best) > 1 else int(best[0])
    return code | (0x80 if math.copysign(1.0, x) < 0 else 0)


# -- bf16 -------------------------------------------------------------------------------
def _bf16_edge_cases() -> np.ndarray:
    ties = [0x3F808000, 0x3F818000, 0xBF808000, 0x3F807FFF, 0x3F808001]  # even/odd ties, near ties
    special = [0x7F7FFFFF, 0x7F7F8000, 0x00000001, 0x00008000, 0x00018000, 0x807FFFFF, 0x80000000, 0x7F800000]
    return np.concatenate([_from_bits(ties + special), _f32([0.0, 1.0, -1.0, 2.0**-130, 3.0e38])])


def test_bf16_numpy_matches_torch_on_random_and_edge_values():
    x = np.concatenate([_random_f32(200_000, 1, -140, 127), _bf16_edge_cases()])
    want = nx.bf16_rne(torch.from_numpy(x)).numpy().view(np.uint32)
    assert np.array_equal(nx.np_bf16_rne(x).view(np.uint32), want)


def test_bf16_ties_go_to_even():
    got = nx.np_bf16_rne(_from_bits([0x3F808000, 0x3F818000, 0x3F808001])).view(np.uint32)
    assert got.tolist() == [0x3F800000, 0x3F820000, 0x3F810000]


def test_bf16_keeps_negative_zero_and_nan():
    got = nx.np_bf16_rne(_f32([-0.0, np.nan]))
    assert got.view(np.uint32)[0] == 0x80000000
    assert np.isnan(got[1])


# -- e4m3 -------------------------------------------------------------------------------
def _e4m3_edge_cases() -> np.ndarray:
    _, values = _e4m3_table()
    mids = (values[1:] + values[:-1]) / 2  # every tie, subnormal ones included
    near = np.concatenate([np.nextafter(_f32(mids), np.inf), np.nextafter(_f32(mids), -np.inf)])
    special = [0.0, -0.0, 448.0, 464.0, 479.0, 480.0, 1e30, np.inf, -np.inf, 2.0**-10, 2.0**-11, 3 * 2.0**-11]
    both = np.concatenate([values, mids, near, special])
    return _f32(np.concatenate([both, -both]))


def test_e4m3_numpy_matches_torch_on_random_and_edge_values():
    x = np.concatenate([_random_f32(300_000, 2, -16, 12), _e4m3_edge_cases()])
    want = nx.e4m3_encode(torch.from_numpy(x)).numpy()
    assert np.array_equal(nx.np_e4m3_encode(x), want)


@pytest.mark.parametrize(
    "x, code",
    [
        (1.0, 0x38),
        (448.0, 0x7E),
        (-448.0, 0xFE),
        (500.0, 0x7E),
        (-1e30, 0xFE),
        (np.inf, 0x7E),
        (-0.0, 0x80),
        (0.0, 0x00),
        (2.0**-9, 0x01),
        (2.0**-10, 0x00),
        (3 * 2.0**-10, 0x02),
        (1.0625, 0x38),
        (1.1875, 0x3A),
        (2.0**-6, 0x08),
        (-(2.0**-12), 0x80),
        (464.0, 0x7E),
    ],
)
def test_e4m3_hand_codes(x, code):
    assert _e4m3_by_table(x) == code
    assert int(nx.np_e4m3_encode(_f32([x]))[0]) == code
    assert int(nx.e4m3_encode(torch.tensor([x], dtype=torch.float32))[0]) == code


def test_e4m3_matches_exhaustive_table_search():
    x = np.concatenate([_random_f32(2_000, 3, -12, 10), _e4m3_edge_cases()[::7]])
    want = [_e4m3_by_table(float(v)) for v in x]
    assert nx.np_e4m3_encode(x).tolist() == want


def test_e4m3_nan_codes_match_torch():
    x = _f32([np.nan, -np.nan])
    assert np.array_equal(nx.np_e4m3_encode(x), nx.e4m3_encode(torch.from_numpy(x)).numpy())


def test_e4m3_decode_round_trips_every_finite_code():
    codes = np.array([c for c in range(256) if c & 0x7F != 0x7F], dtype=np.uint8)
    values = nx.np_e4m3_decode(codes)
    assert np.array_equal(nx.np_e4m3_encode(values), codes)
    assert np.array_equal(nx.e4m3_decode(torch.from_numpy(codes)).numpy(), values)


# -- UE8M0 ------------------------------------------------------------------------------
def test_ue8m0_rounds_up_to_a_power_of_two():
    raw = np.concatenate(
        [_f32(np.abs(_random_f32(50_000, 4, -30, 30))), _f32([2.0**k for k in range(-40, 40)])]
    )
    want = np.array([127 + math.ceil(math.log2(float(v))) for v in raw])
    assert np.array_equal(nx.np_ue8m0_byte(raw).astype(np.int64), want)
    assert np.array_equal(nx.ue8m0_byte(torch.from_numpy(raw)).numpy(), nx.np_ue8m0_byte(raw))


@pytest.mark.parametrize("raw, e8", [(1.0, 127), (0.125, 124), (1e-4, 114), (56 / 448, 124), (2 / 448, 120)])
def test_ue8m0_hand_bytes(raw, e8):
    assert int(nx.np_ue8m0_byte(_f32([raw]))[0]) == e8


def test_ue8m0_next_float_above_a_power_rounds_up():
    just_above = np.nextafter(_f32([0.25]), np.inf)
    assert int(nx.np_ue8m0_byte(just_above)[0]) == 126


def test_pow2_from_ue8m0_is_exact_for_every_byte():
    e8 = np.arange(256, dtype=np.uint8)
    want = _f32([math.ldexp(1.0, 127 - int(e)) for e in e8])
    assert np.array_equal(nx.np_pow2_from_ue8m0(e8).view(np.uint32), want.view(np.uint32))
    got = nx.inv_scale_from_ue8m0(torch.from_numpy(e8)).numpy()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    finite = e8[:255]  # 2^(255 - 127) overflows fp32
    scale = nx.scale_from_ue8m0(torch.from_numpy(finite)).numpy().astype(np.float64)
    assert np.array_equal(scale, [math.ldexp(1.0, int(e) - 127) for e in finite])


def test_pow2_f32_covers_subnormals_and_overflow():
    k = torch.arange(-149, 129)
    got = nx.pow2_f32(k).double().tolist()
    assert got[:-1] == [math.ldexp(1.0, int(e)) for e in k[:-1]]
    assert math.isinf(got[-1])
