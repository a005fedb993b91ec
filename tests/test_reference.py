"""The torch reference against bytes worked out independently (docs/kernels.md §3-§5)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compressc import reference as ref
from compressc.numerics import e4m3_decode
from compressc.scenarios import cos_sin_cache, make_scenario
from compressc.specs import make_spec

S = 0xA5  # sentinel


# -- independent scalar rules (Python floats, no compressc.numerics) ----------------------
def _bf16(x: float) -> float:
    """Nearest bf16, ties to even: Python's round() is round-half-even."""
    if x == 0.0:
        return x
    _, e = math.frexp(x)
    ulp = math.ldexp(1.0, e - 8)
    return round(x / ulp) * ulp


def _bf16_le(x: float) -> list[int]:
    return list(struct.pack("<f", x)[2:])


def _e4m3(x: float) -> int:
    """Nearest e4m3fn code by exhaustive search (ties to the even code), satfinite."""
    best, best_d = 0, math.inf
    for code in range(0x7F):
        e, m = code >> 3, code & 7
        val = m * 2.0**-9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        d = abs(val - min(abs(x), 448.0))
        if d < best_d or (d == best_d and code % 2 == 0):
            best, best_d = code, d
    return best | (0x80 if math.copysign(1.0, x) < 0 else 0)


def _f32_div(a: float, b: float) -> float:
    return float(np.float32(a) / np.float32(b))


def _ue8m0(raw: float) -> int:
    return 127 + math.ceil(math.log2(raw))


# -- a hand-built launch: uniform softmax over +-1 rows makes x = v exactly --------------
def _sign(head: int) -> np.ndarray:
    return np.where(np.arange(head) % 3 == 1, -1.0, 1.0)


def _hand_launch(spec, weight: torch.Tensor, k_cache: torch.Tensor) -> None:
    """Positions 0..7 of one request; p=3 stores to slot 69 (page 1, off 5), p=7 to slot 2.

    Non-boundary rows carry the same slots, so a kernel ignoring the boundary rule is seen.
    eps = 0 and |x| = 1 make rrms exactly 1, so y = v * w.
    """
    sw, head = spec.state_width, spec.head
    state = torch.empty(3, 4, 2 * sw)
    state[..., :sw] = torch.tensor(np.tile(_sign(head), sw // head), dtype=torch.float32)
    state[..., sw:] = torch.linspace(-3, 3, sw)  # per channel, equal over rows: uniform softmax
    cos_sin = torch.full((8, spec.rope), 0.6)
    cos_sin[0, : spec.rope // 2], cos_sin[0, spec.rope // 2 :] = 1.0, 0.0  # P=0 for p=3
    cos_sin[4, : spec.rope // 2], cos_sin[4, spec.rope // 2 :] = 0.0, 1.0  # P=4 for p=7
    ref.compress_fused(
        spec,
        state,
        torch.zeros(8, dtype=torch.int32),
        torch.arange(8),
        torch.arange(8) + 100,
        torch.tensor([[2, 0]], dtype=torch.int32),
        4,
        weight,
        0.0,
        cos_sin,
        k_cache,
        torch.tensor([69, 69, 69, 69, 2, 2, 2, 2]),
        64,
    )


def _hand_weight(spec, dtype: torch.dtype) -> torch.Tensor:
    rng = np.random.default_rng(7)
    w = np.empty(spec.head)
    w[0:64] = 56.0
    w[64:128] = 1e-5
    w[128:192] = np.resize([1.0625, 1.1875], 64)
    w[128] = 448.0
    w[192:256], w[193], w[194] = 2.0, 0.0, 0.0
    w[256:320], w[256] = 3.0, 56.0
    w[320:384] = np.resize([1.0625 + 2**-8, 1.0625 + 3 * 2**-8, 1.0625, 1.1875], 64)
    w[320] = 7.0
    w[384:] = rng.uniform(0.5, 3.0, spec.head - 384) * rng.choice([-1, 1], spec.head - 384)
    return torch.tensor(w, dtype=torch.float32).to(dtype)


def _expected_ds_mla(y: list[float], rope_pairs: list[float]) -> tuple[list[int], list[int]]:
    q = [_bf16(v) for v in y[:448]]
    codes, e8s = [], []
    for b in range(7):
        block = q[64 * b : 64 * b + 64]
        e8 = _ue8m0(max(float(np.float32(1e-4)), _f32_div(max(abs(v) for v in block), 448.0)))
        codes += [_e4m3(v * 2.0 ** (127 - e8)) for v in block]
        e8s.append(e8)
    rope = sum((_bf16_le(_bf16(v)) for v in rope_pairs), [])
    return codes + rope, e8s + [0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c4a_hand_worked_bytes(dtype):
    spec = make_spec("c4a", weight_dtype="f32" if dtype == torch.float32 else "bf16")
    w = _hand_weight(spec, dtype)
    cache = torch.full((3, 64, 585), S, dtype=torch.uint8)
    _hand_launch(spec, w, cache)
    y = [float(s) * float(v) for s, v in zip(_sign(512), w.float(), strict=True)]
    a, b = y[448::2], y[449::2]
    want = torch.full((3, 37440), S, dtype=torch.uint8)
    for page, off, pairs in ((1, 5, zip(a, b, strict=True)), (0, 2, zip([-v for v in b], a, strict=True))):
        values, scales = _expected_ds_mla(y, [v for pair in pairs for v in pair])
        want[page, off * 576 : off * 576 + 576] = torch.tensor(values, dtype=torch.uint8)
        want[page, 36864 + off * 8 : 36864 + off * 8 + 8] = torch.tensor(scales, dtype=torch.uint8)
    assert torch.equal(cache.reshape(3, -1), want)
    page0 = cache.reshape(3, -1)[0]
    token, scales = page0[2 * 576 : 3 * 576], page0[36864 + 16 : 36864 + 24].tolist()
    assert scales[:6] == [124, 114, 127, 120, 124, 121] and scales[7] == 0
    assert token[[0, 1, 128, 129, 130, 193, 194, 256, 257]].tolist() == [
        0x7E,
        0xFE,
        0x7E,
        0x3A,
        0xB8,
        0x80,
        0x00,
        0xFE,
        0x5C,
    ]
    # 1.0625+2^-8 and 1.0625+3*2^-8 hit bf16 ties; 1.0625 and 1.1875 (x64) hit e4m3 ties.
    assert token[320:326].tolist() == [0x7E, 0x69, 0xE8, 0x6A, 0x68, 0xE9]


@pytest.mark.parametrize("tiny", [False, True])
def test_indexer_hand_worked_bytes(tiny):
    spec = make_spec("indexer_fp8", weight_dtype="f32")
    rng = np.random.default_rng(3)
    w = rng.uniform(0.5, 3.0, 128) * rng.choice([-1, 1], 128)
    w[5] = 112.0  # amax = 448 * 2^-2: scale exactly 0.25
    w = np.full(128, 1e-6) if tiny else w
    w = torch.tensor(w, dtype=torch.float32)
    cache = torch.full((3, 64, 132), S, dtype=torch.uint8)
    _hand_launch(spec, w, cache)
    y = [float(s) * float(v) for s, v in zip(_sign(128), w, strict=True)]
    rot = [
        v for pair in zip([-v for v in y[65::2]], y[64::2], strict=True) for v in pair
    ]  # p=7: P=4, c=0, s=1
    q = [_bf16(v) for v in y[:64] + rot]
    scale = 2.0 ** math.ceil(math.log2(_f32_div(max(max(abs(v) for v in q), 1e-4), 448.0)))
    assert scale == (2.0**-22 if tiny else 0.25)
    page0 = cache.reshape(3, -1)[0]
    assert page0[2 * 128 : 3 * 128].tolist() == [_e4m3(v / scale) for v in q]
    assert page0[64 * 128 + 8 : 64 * 128 + 12].tolist() == list(struct.pack("<f", scale))
    assert page0[64 * 128 + 8 : 64 * 128 + 12].tolist() == (
        [0, 0, 0x80, 0x34] if tiny else [0, 0, 0x80, 0x3E]
    )
    assert (cache[2] == S).all()


# -- pooling against a float64 softmax --------------------------------------------------
def _pool64(sc, t: int) -> torch.Tensor:
    spec = sc.spec
    head, sw, p, req = spec.head, spec.state_width, int(sc.positions[t]), int(sc.token_to_req_indices[t])
    kv, score = [], []
    for i in range(spec.window):
        q = p - spec.window + 1 + i
        if q < 0:
            continue
        row = sc.state_cache[int(sc.block_table[req, q // sc.block_size]), q % sc.block_size].double()
        col = head if spec.overlap and i >= spec.ratio else 0
        kv.append(row[col : col + head])
        score.append(row[sw + col : sw + col + head])
    return (torch.softmax(torch.stack(score), dim=0) * torch.stack(kv)).sum(0)


@pytest.mark.parametrize(
    "kernel, kind",
    [("c4a", "mixed"), ("c4a", "decode"), ("c128a_compress", "mixed"), ("indexer_fp8", "chunked")],
)
def test_pool_matches_float64_softmax(kernel, kind):
    sc = make_scenario(make_spec(kernel), kind, 64 if kernel == "c4a" else 300, seed=5)
    rows = sc.active().nonzero().squeeze(1)
    got = ref.pool(
        sc.spec, sc.state_cache, sc.token_to_req_indices, sc.positions, sc.block_table, sc.block_size, rows
    )
    want = torch.stack([_pool64(sc, int(t)) for t in rows])
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)
    if sc.spec.overlap and kind != "chunked":
        assert 3 in sc.positions[rows].tolist()  # the sequence start with absent rows is covered


# -- whole launches: vectorised reference == row-by-row reference -----------------------
def _row_by_row(sc) -> torch.Tensor:
    """Apply docs/kernels.md §3 one row at a time with plain Python activity checks."""
    spec, out = sc.spec, sc.poisoned_cache()
    for t in range(sc.T):
        if t >= len(sc.positions) or t >= len(sc.kv_slot_mapping):
            continue
        p, kv = int(sc.positions[t]), int(sc.kv_slot_mapping[t])
        if int(sc.slot_mapping[t]) < 0 or (p + 1) % spec.ratio or kv < 0:
            continue
        rows = torch.tensor([t])
        x = ref.pool(
            spec, sc.state_cache, sc.token_to_req_indices, sc.positions, sc.block_table, sc.block_size, rows
        )
        vals, scales = ref.norm_rope_quant(
            spec, x, sc.positions[rows], sc.rms_norm_weight, sc.rms_norm_eps, sc.cos_sin_cache
        )
        ref.store_bytes(spec, out, torch.tensor([kv]), vals, scales, sc.kv_cache_block_size)
    return out


@pytest.mark.parametrize("kernel", ["c4a", "indexer_fp8"])
@pytest.mark.parametrize("kind", ["prefill", "chunked", "decode", "mixed"])
def test_fused_equals_row_by_row_and_keeps_sentinels(kernel, kind):
    sc = make_scenario(make_spec(kernel), kind, 40, seed=11, weight_dtype="f32" if kind == "mixed" else None)
    got = sc.run_reference()
    assert torch.equal(got, _row_by_row(sc))
    touched = _touched_mask(sc)
    assert (got.reshape(-1)[~touched] == S).all()
    assert (got.reshape(-1)[touched] != S).float().mean() > 0.9


def _touched_mask(sc) -> torch.Tensor:
    store, B, stride = sc.spec.store, sc.kv_cache_block_size, sc.page_bytes
    mask = torch.zeros(sc.k_cache.numel(), dtype=torch.bool)
    for slot in sc.kv_slot_mapping[: sc.T][sc.active()].tolist():
        base, off = slot // B * stride, slot % B
        mask[base + off * store.token_stride : base + (off + 1) * store.token_stride] = True
        start = base + B * store.token_stride + off * store.scale_dim
        mask[start : start + store.scale_dim] = True
    return mask


def test_short_positions_row_is_inactive():
    spec = make_spec("c4a")
    full = make_scenario(spec, "prefill", 8, seed=2)
    short = make_scenario(spec, "prefill", 8, seed=2, short_positions=True)
    assert full.active().tolist()[-1] and not short.active().tolist()[-1]
    full.kv_slot_mapping[-1] = -1
    assert torch.equal(short.run_reference(), full.run_reference())


def test_c128a_split_path():
    comp, store = make_spec("c128a_compress"), make_spec("c128a_store", weight_dtype="f32")
    sc = make_scenario(comp, "mixed", 600, seed=4)
    kv = sc.run_reference()
    act = sc.active()
    assert (kv[~act].view(torch.uint8) == S).all()
    assert torch.allclose(
        kv[act].double(), torch.stack([_pool64(sc, int(t)) for t in act.nonzero()]), rtol=1e-5, atol=1e-6
    )
    cache = torch.full((sc.num_pages, 2, 864), S, dtype=torch.uint8)
    ref.c128a_store(
        store,
        kv,
        sc.token_to_req_indices,
        sc.positions,
        sc.slot_mapping,
        sc.rms_norm_weight.float(),
        sc.rms_norm_eps,
        sc.cos_sin_cache,
        cache,
        sc.kv_slot_mapping,
        2,
    )
    vals, scales = ref.norm_rope_quant(
        store, kv[act], sc.positions[act], sc.rms_norm_weight.float(), 1e-6, sc.cos_sin_cache
    )
    slot = int(sc.kv_slot_mapping[act][0])
    page = cache[slot // 2].reshape(-1)
    assert torch.equal(page[(slot % 2) * 576 : (slot % 2 + 1) * 576], vals[0])
    assert torch.equal(page[1152 + (slot % 2) * 8 : 1152 + (slot % 2 + 1) * 8], scales[0])


def test_bf16_and_f32_weights_differ_only_through_rounding():
    spec = make_spec("c4a", weight_dtype="f32")
    f32 = make_scenario(spec, "decode", 16, seed=9, weight_dtype="f32")
    as_bf16 = make_scenario(spec, "decode", 16, seed=9, weight_dtype="bf16")
    assert as_bf16.rms_norm_weight.dtype == torch.bfloat16 and f32.rms_norm_weight.dtype == torch.float32
    out_bf16 = as_bf16.run_reference()
    f32.rms_norm_weight = as_bf16.rms_norm_weight.float()
    assert torch.equal(f32.run_reference(), out_bf16)
    f32.rms_norm_weight = f32.rms_norm_weight * (1 + 2.0**-12)
    assert not torch.equal(f32.run_reference(), out_bf16)


def test_strided_cache_pages_are_placed_by_stride():
    sc = make_scenario(make_spec("c4a"), "mixed", 40, seed=1)
    dense = sc.run_reference()
    buf = torch.full((sc.num_pages, 40000), S, dtype=torch.uint8)
    view = buf[:, : sc.page_bytes].view(sc.num_pages, 64, 585)
    ref.compress_fused(sc.spec, *sc.args(view))
    assert torch.equal(buf[:, : sc.page_bytes], dense.reshape(sc.num_pages, -1))
    assert (buf[:, sc.page_bytes :] == S).all()


def test_entry_points_reject_the_wrong_kernel():
    sc = make_scenario(make_spec("c4a"), "decode", 2)
    with pytest.raises(
        ValueError, match=r"spec.kernel='c128a_store': this reference entry point handles c4a, indexer_fp8"
    ):
        ref.compress_fused(make_spec("c128a_store"), *sc.args())


def test_store_bytes_checks_dtype_and_page_stride():
    spec = make_spec("c4a")
    vals, scales = torch.zeros(1, 576, dtype=torch.uint8), torch.zeros(1, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="k_cache must be uint8"):
        ref.store_bytes(spec, torch.zeros(2, 37440, dtype=torch.int8), torch.tensor([0]), vals, scales, 64)
    with pytest.raises(ValueError, match="page stride 1000 cannot hold 64 tokens of 576\\+8 bytes"):
        ref.store_bytes(spec, torch.zeros(2, 1000, dtype=torch.uint8), torch.tensor([0]), vals, scales, 64)


# -- property: dequantised bytes stay within one rounding of a float64 computation ------
def _dequant(spec, vals: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantised head values, per-channel scale) from packed bytes."""
    if spec.store.name == "indexer_fp8":
        scale = scales[:, :4].contiguous().view(torch.float32).double().expand(-1, spec.head)
        return e4m3_decode(vals[:, : spec.head]).double() * scale, scale
    e8 = scales[:, : spec.nope // spec.quant_block].double()
    scale = torch.pow(2.0, e8 - 127).repeat_interleave(spec.quant_block, dim=1)
    nope = e4m3_decode(vals[:, : spec.nope]).double() * scale
    rope = vals[:, spec.nope : spec.nope + 2 * spec.rope].contiguous().view(torch.bfloat16).double()
    return torch.cat((nope, rope), 1), torch.cat((scale, torch.zeros_like(rope)), 1)


def _exact(spec, x, w, pos, cs) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 y with rope rotated, and each channel's rotated-pair norm (0 for nope)."""
    x = x.double()
    y = x / torch.sqrt((x * x).mean(1, keepdim=True) + float(np.float32(1e-6))) * w.double()
    c = cs[(pos // spec.ratio) * spec.ratio].double()
    half = spec.rope // 2
    a, b = y[:, spec.nope :: 2], y[:, spec.nope + 1 :: 2]
    rot = torch.stack((a * c[:, :half] - b * c[:, half:], a * c[:, half:] + b * c[:, :half]), -1).reshape(
        a.shape[0], -1
    )
    norm = torch.sqrt(a * a + b * b).repeat_interleave(2, dim=1)
    return torch.cat((y[:, : spec.nope], rot), 1), torch.cat((torch.zeros_like(y[:, : spec.nope]), norm), 1)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    kernel=st.sampled_from(["c4a", "indexer_fp8", "c128a_store"]),
    seed=st.integers(0, 2**31 - 1),
    log_mag=st.integers(-30, 30),
    tiny=st.booleans(),
    bf16_weight=st.booleans(),
)
def test_dequantised_output_is_within_one_rounding(kernel, seed, log_mag, tiny, bf16_weight):
    spec = make_spec(kernel)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, spec.head)) * np.exp2(log_mag + rng.uniform(-3, 3, spec.head))
    if tiny:
        x[:, : spec.quant_block] *= 1e-4
    x = torch.tensor(x, dtype=torch.float32)
    w = torch.tensor(rng.uniform(-2, 2, spec.head), dtype=torch.bfloat16 if bf16_weight else torch.float32)
    pos, cs = torch.tensor(rng.integers(0, 2048, 6)), cos_sin_cache(spec.rope, 2048)
    vals, scales = ref.norm_rope_quant(spec, x, pos, w, 1e-6, cs)
    got, scale = _dequant(spec, vals, scales)
    want, pair_norm = _exact(spec, x, w, pos, cs)
    bound = (2.0**-4 + 2.0**-7) * want.abs() + 2.0**-10 * scale + 4e-6 * pair_norm + 1e-30
    assert ((got - want).abs() <= bound).all()
    assert (scales[:, spec.store.scale_dim - 1] == 0).all() or spec.store.name == "indexer_fp8"
