"""Scenarios have docs/kernels.md §2 dtypes and cover every case docs/kernels.md §6 asks for."""

from __future__ import annotations

import pytest
import torch

from compressc import reference as ref
from compressc.scenarios import KINDS, make_scenario, page_bytes
from compressc.specs import make_spec

KERNELS = ("c4a", "c128a_compress", "c128a_store", "indexer_fp8")


def _t(spec) -> int:
    return 40 if spec.ratio == 4 else 400


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes_and_shapes_follow_spec_section_2(kernel, kind):
    spec = make_spec(kernel)
    sc = make_scenario(spec, kind, _t(spec))
    assert sc.token_to_req_indices.dtype == torch.int32 and sc.block_table.dtype == torch.int32
    for name in ("positions", "slot_mapping", "kv_slot_mapping"):
        assert getattr(sc, name).dtype == torch.int64
    assert sc.k_cache.dtype == torch.uint8 and sc.page_bytes == page_bytes(spec, sc.kv_cache_block_size)
    assert sc.cos_sin_cache.shape == (int(sc.positions.max()) + 1, spec.rope)
    assert sc.compressed_kv.shape == (sc.T, spec.head) and sc.compressed_kv.dtype == torch.float32
    assert sc.block_size == (4 if spec.ratio == 4 else 8)
    if spec.pools:
        assert sc.state_cache.shape[1:] == (sc.block_size, 2 * spec.state_width)
        assert (sc.state_cache != 0).all()
    else:
        assert sc.state_cache is None


@pytest.mark.parametrize(
    "kernel, B, stride", [("c4a", 64, 37440), ("c128a_store", 2, 1728), ("indexer_fp8", 64, 8448)]
)
def test_page_strides(kernel, B, stride):
    sc = make_scenario(make_spec(kernel), "decode", 3)
    assert (sc.kv_cache_block_size, sc.page_bytes) == (B, stride)
    assert sc.k_cache.shape[1:] == (B, stride // B)


def test_same_seed_same_tensors_other_seed_other_tensors():
    spec = make_spec("c4a")
    a, b, c = (make_scenario(spec, "mixed", 64, seed=s) for s in (3, 3, 4))
    for name in ("state_cache", "positions", "kv_slot_mapping", "rms_norm_weight", "block_table"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.state_cache, c.state_cache)


def test_score_has_spread():
    sc = make_scenario(make_spec("c4a"), "prefill", 64)
    score = sc.state_cache[..., sc.spec.state_width :]
    assert score.std() > 1.5 and score.max() - score.min() > 10


@pytest.mark.parametrize("kernel", ["c4a", "c128a_compress"])
def test_decode_rows_are_all_active_with_distinct_slots(kernel):
    spec = make_spec(kernel)
    sc = make_scenario(spec, "decode", 50, seed=2)
    assert sc.active().all()
    assert len(set(sc.kv_slot_mapping.tolist())) == 50
    assert ((sc.positions + 1) % spec.ratio == 0).all()
    if spec.overlap:
        assert int(sc.positions[0]) == 3


@pytest.mark.parametrize("kernel", ["c4a", "c128a_store", "indexer_fp8"])
@pytest.mark.parametrize("kind", KINDS)
def test_kv_slots_lie_in_the_requests_own_pages(kernel, kind):
    sc = make_scenario(make_spec(kernel), kind, 300, seed=6)
    for t in sc.active().nonzero().squeeze(1).tolist():
        req, slot = int(sc.token_to_req_indices[t]), int(sc.kv_slot_mapping[t])
        compressed = int(sc.positions[t]) // sc.spec.ratio
        assert sc.kv_block_table[req, compressed // sc.kv_cache_block_size] == slot // sc.kv_cache_block_size


def _window_pages(sc, t: int) -> set[int]:
    p, req, W = int(sc.positions[t]), int(sc.token_to_req_indices[t]), sc.spec.window
    return {int(sc.block_table[req, q // sc.block_size]) for q in range(max(0, p - W + 1), p + 1)}


@pytest.mark.parametrize("kernel", ["c4a", "c128a_compress"])
def test_requests_read_disjoint_state_pages(kernel):
    sc = make_scenario(make_spec(kernel), "mixed", 600, seed=8)
    pages: dict[int, set[int]] = {}
    for t in sc.active().nonzero().squeeze(1).tolist():
        pages.setdefault(int(sc.token_to_req_indices[t]), set()).update(_window_pages(sc, t))
    owners = [p for ps in pages.values() for p in ps]
    assert len(owners) == len(set(owners))


def test_mixed_covers_every_hazard():
    spec = make_spec("c4a")
    sc = make_scenario(spec, "mixed", 64, seed=1)
    act, boundary = sc.active(), (sc.positions + 1) % 4 == 0
    real_slots = set(sc.kv_slot_mapping[act].tolist())
    pad = sc.slot_mapping < 0
    assert pad.any() and set(sc.kv_slot_mapping[pad].tolist()) <= real_slots and boundary[pad].all()
    assert ((sc.kv_slot_mapping < 0) & boundary & ~pad).any()
    collide = ~boundary & torch.tensor([s in real_slots for s in sc.kv_slot_mapping.tolist()])
    assert collide.any()
    assert sc.token_to_req_indices.unique().numel() >= 2
    assert 3 in sc.positions[act].tolist()
    assert not torch.equal(sc.block_table.flatten().sort().values, sc.block_table.flatten())


def test_c128_windows_start_on_state_pages():
    sc = make_scenario(make_spec("c128a_compress"), "mixed", 900, seed=3)
    starts = sc.positions[sc.active()] - 127
    assert starts.numel() > 0 and (starts % 8 == 0).all()


@pytest.mark.parametrize("kind", ["prefill", "chunked", "mixed"])
def test_a_kernel_ignoring_the_boundary_rule_is_caught(kind, monkeypatch):
    sc = make_scenario(make_spec("c4a"), kind, 40, seed=2)
    good = sc.run_reference()
    real = ref.active_rows

    def only_non_boundary(spec, T, req, pos, slot, kv):
        # The rows a boundary-blind kernel would add; on a GPU they race with the real rows.
        return real(spec.with_(ratio=1), T, req, pos, slot, kv) & ~real(spec, T, req, pos, slot, kv)

    monkeypatch.setattr(ref, "active_rows", only_non_boundary)
    assert not torch.equal(sc.run_reference(), good)


def test_a_kernel_ignoring_padding_is_caught():
    sc = make_scenario(make_spec("c4a"), "mixed", 40, seed=2)
    good = sc.run_reference()
    sc.slot_mapping = sc.slot_mapping.clamp(min=0)
    assert not torch.equal(sc.run_reference(), good)


@pytest.mark.parametrize("kernel, byte", [("c4a", 1), ("c128a_store", 1)])
def test_tiny_block_hits_the_scale_floor(kernel, byte):
    sc = make_scenario(make_spec(kernel), "decode", 8, tiny_block=True)
    out = sc.run_reference().reshape(sc.num_pages, -1)
    B, store = sc.kv_cache_block_size, sc.spec.store
    for slot in sc.kv_slot_mapping.tolist():
        scales = out[slot // B, B * store.token_stride + (slot % B) * store.scale_dim :][: store.scale_dim]
        assert int(scales[byte]) == 114  # 1e-4 rounded up to 2^-13
        assert int(scales[0]) > 114


def test_tiny_indexer_weight_hits_the_amax_floor():
    sc = make_scenario(make_spec("indexer_fp8"), "decode", 4, tiny_block=True)
    out = sc.run_reference().reshape(sc.num_pages, -1)
    for slot in sc.kv_slot_mapping.tolist():
        scale = out[slot // 64, 64 * 128 + (slot % 64) * 4 :][:4].contiguous().view(torch.float32)
        assert float(scale) == 2.0**-22


def test_weight_dtype_override_and_errors():
    assert (
        make_scenario(make_spec("c4a", weight_dtype="f32"), "decode", 2).rms_norm_weight.dtype
        == torch.float32
    )
    assert (
        make_scenario(make_spec("c4a"), "decode", 2, weight_dtype="f32").rms_norm_weight.dtype
        == torch.float32
    )
    assert make_scenario(make_spec("c4a"), "decode", 2).rms_norm_weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="kind='burst': must be one of prefill, chunked, decode, mixed"):
        make_scenario(make_spec("c4a"), "burst", 4)
    with pytest.raises(ValueError, match="T=0: a launch has at least one row"):
        make_scenario(make_spec("c4a"), "decode", 0)
    with pytest.raises(ValueError, match="nonboundary_kv='drop': must be 'collide' or 'none'"):
        make_scenario(make_spec("c4a"), "decode", 2, nonboundary_kv="drop")


def test_poisoned_outputs_are_all_sentinel():
    sc = make_scenario(make_spec("c128a_compress"), "decode", 3)
    assert (sc.poisoned_cache(0x5A) == 0x5A).all()
    kv = sc.poisoned_compressed_kv()
    assert kv.shape == (3, 512) and (kv.view(torch.uint8) == 0xA5).all()


def test_nonboundary_none_gives_minus_one():
    sc = make_scenario(make_spec("c4a"), "prefill", 16, nonboundary_kv="none")
    boundary = (sc.positions + 1) % 4 == 0
    assert (sc.kv_slot_mapping[~boundary] == -1).all() and (sc.kv_slot_mapping[boundary] >= 0).all()
