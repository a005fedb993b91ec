"""The C128 ring state on the GPU (docs/kernels.md §10): ops.compress_c128a_ring (the ring compress
kernel, then the unchanged c128a_store) and ops.save_ring_tail against the torch reference.

Kernels come from COMPRESSC_CACHE_DIR as for the other GPU tests (`compressc build --arch sm90`
builds c128a_compress_ring_h512_q64_r64_f32 with the default matrix). Every launch writes into
a sentinel-poisoned k_cache and compressed_kv; the reference writes into poisoned copies.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compressc import reference
from compressc.acceptance import compare_cache_bytes
from compressc.runtime import ops
from compressc.scenarios import KINDS, SENTINEL
from compressc.scenarios_ring import make_ring_scenario, ring_scenario
from compressc.specs import make_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RING = make_spec("c128a_compress", weight_dtype="f32", state_layout="ring")
ROWS = (1, 7, 300, 1000, 4096)


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t.view(torch.uint8), SENTINEL).view(t.dtype)


def _run(sc, extra_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_cache, compressed_kv) written by the op over poisoned buffers."""
    cache = _poisoned(sc.k_cache)
    pooled = _poisoned(torch.empty(sc.T + extra_rows, sc.spec.head, device=sc.kv.device))
    ops.compress_c128a_ring(*sc.op_args(cache), **sc.op_keywords(), compressed_kv=pooled)
    torch.cuda.synchronize()
    return cache, pooled


def _assert_matches_reference(sc, cache: torch.Tensor, pooled: torch.Tensor) -> None:
    want_pooled = sc.reference_compress(_poisoned(pooled))
    want = sc.reference_store(want_pooled, _poisoned(sc.k_cache))
    active = sc.active()
    assert bool(active.any())
    inactive = torch.ones(pooled.shape[0], dtype=torch.bool, device=pooled.device)
    inactive[: sc.T] = ~active
    assert bool((pooled[inactive].view(torch.uint8) == SENTINEL).all())  # nothing else written
    torch.testing.assert_close(pooled[: sc.T][active], want_pooled[: sc.T][active], rtol=1e-4, atol=1e-5)
    n = min(sc.T, sc.kv_slot_mapping.numel())
    slots = sc.kv_slot_mapping[:n][active[:n]]
    report = compare_cache_bytes(sc.store_spec, cache, want, slots,
                                 kv_cache_block_size=sc.kv_cache_block_size)
    assert report.ok, str(report)
    assert report.code_steps <= max(1, 1e-4 * report.codes), str(report)


@pytest.mark.parametrize("T", ROWS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weight", ["bf16", "f32"])
def test_ring_compress_then_store_matches_the_reference(cuda_device, weight, kind, T):
    if kind == "prefill" and T < 128:
        T = 128 + T  # a prefill needs a boundary row
    if kind == "decode" and T > 1000:
        T = 1000  # a ring of 256 rows (1 MiB) per request
    store = make_spec("c128a_store", weight_dtype=weight)
    sc = ring_scenario(store, kind, T, device=cuda_device, seed=T, paged=False)
    _assert_matches_reference(sc, *_run(sc, extra_rows=3))


@pytest.mark.parametrize("capacity", [128, 256, 384])
@pytest.mark.parametrize("strided", [False, True])
def test_ring_edge_cases(cuda_device, capacity, strided):
    """Chunks longer than the ring, starting mid-window, several requests, a request with ring block
    -1, padding rows, a boundary row with kv slot -1, kv/score as views with a row stride."""
    chunks = [(300, 700), (127, 1), (1000, 200), (50, 90), (2 * capacity + 5, 3 * capacity)]
    sc = make_ring_scenario(chunks, capacity=capacity, dead=(3,), padding=5, strided=strided,
                            device=cuda_device, seed=capacity)
    _assert_matches_reference(sc, *_run(sc))


def test_ring_given_as_state_pages_of_8(cuda_device):
    sc = make_ring_scenario([(300, 700), (1000, 200)], capacity=256, device=cuda_device, seed=1)
    paged_view = replace(sc, state_cache=sc.state_cache.view(-1, 8, 1024))
    _assert_matches_reference(sc, *_run(paged_view))


def test_tail_save_matches_the_reference(cuda_device):
    sc = make_ring_scenario([(300, 700), (5, 3), (1000, 1)], capacity=256, padding=3, device=cuda_device)
    got, want = sc.state_cache.clone(), sc.state_cache.clone()
    ops.save_ring_tail(got, sc.kv, sc.score, sc.ape, sc.positions, sc.tail_slot_mapping, sc.capacity)
    reference.save_ring_tail(want, sc.kv, sc.score, sc.ape, sc.positions, sc.tail_slot_mapping)
    torch.cuda.synchronize()
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_steps_with_tail_saves_match_the_paged_path(cuda_device):
    """One sequence in chunks (one longer than the ring): compress + store, then save the tail."""
    full = make_ring_scenario([(0, 1500)], capacity=256, padding=0, device=cuda_device, seed=9)
    ring = torch.full_like(full.state_cache, 9.0)
    cache = _poisoned(full.k_cache)
    for lo, hi in ((0, 100), (100, 800), (800, 801), (801, 1500)):
        qsl = torch.tensor([0, hi - lo], dtype=torch.int32, device=cuda_device)
        req, pos = full.token_to_req_indices[lo:hi], full.positions[lo:hi]
        slots, tail = reference.ring_slots(qsl, req, pos, full.block_table, 256, hi - lo)
        step = replace(full, state_cache=ring, kv=full.kv[lo:hi], score=full.score[lo:hi], positions=pos,
                       token_to_req_indices=req, kv_slot_mapping=full.kv_slot_mapping[lo:hi],
                       query_start_loc=qsl, slot_mapping=slots, tail_slot_mapping=tail)
        ops.compress_c128a_ring(*step.op_args(cache), **step.op_keywords())
        ops.save_ring_tail(ring, step.kv, step.score, step.ape, pos, tail, 256)
    pooled = full.paged_compress(_poisoned(torch.empty_like(full.kv)))
    want = full.reference_store(pooled, _poisoned(full.k_cache))
    torch.cuda.synchronize()
    active = full.active()
    report = compare_cache_bytes(full.store_spec, cache, want, full.kv_slot_mapping[active],
                                 kv_cache_block_size=full.kv_cache_block_size)
    assert report.ok and int(active.sum()) == 1500 // 128 - 1, str(report)


def test_ring_ops_in_a_cuda_graph(cuda_device):
    sc = make_ring_scenario([(300, 700), (1151, 1)], capacity=256, device=cuda_device, seed=5)
    pooled = torch.empty(sc.T, sc.spec.head, device=cuda_device)
    cache, state = _poisoned(sc.k_cache), sc.state_cache.clone()
    captured = replace(sc, state_cache=state)
    ops.compress_c128a_ring(*captured.op_args(cache), **captured.op_keywords(), compressed_kv=pooled)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.compress_c128a_ring(*captured.op_args(cache), **captured.op_keywords(), compressed_kv=pooled)
        ops.save_ring_tail(state, sc.kv, sc.score, sc.ape, sc.positions, sc.tail_slot_mapping, 256)
    cache.fill_(SENTINEL)
    state.copy_(sc.state_cache)
    graph.replay()
    torch.cuda.synchronize()
    want = sc.reference_store(sc.reference_compress(_poisoned(pooled)), _poisoned(sc.k_cache))
    active = sc.active()
    report = compare_cache_bytes(sc.store_spec, cache, want, sc.kv_slot_mapping[active],
                                 kv_cache_block_size=sc.kv_cache_block_size)
    assert report.ok, str(report)
    saved = sc.state_cache.clone()
    reference.save_ring_tail(saved, sc.kv, sc.score, sc.ape, sc.positions, sc.tail_slot_mapping)
    assert torch.equal(state, saved)
