"""COMPRESSC_CHECK_BOUNDS=kernel on the GPU: the checked builds (`*_bounds` variants) skip and
record an out-of-range row, eagerly and inside a CUDA graph (docs/kernels.md §3, "Checked builds").

Needs the checked builds in the cache the runtime reads (build host):
  python -m compressc.cli build --arch sm90 --out build/kernels --bounds
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_ops_gpu import _assert_same_bytes, _c128a_args, _c128a_case, _c128a_reference, _run_fused

from compressc.runtime import bounds_kernel, ops
from compressc.runtime.bounds import IndexOutOfBoundsError
from compressc.scenarios import make_scenario
from compressc.specs import make_spec

pytestmark = pytest.mark.gpu


@pytest.fixture
def kernel_mode(monkeypatch):
    monkeypatch.setattr(ops, "bounds_in_kernel", lambda: True)
    monkeypatch.setattr(ops, "check_bounds_enabled", lambda: True)
    ops.set_debug_checks(True)
    yield
    ops.set_debug_checks(None)


def _case(device, T: int = 64):
    spec = make_spec("c4a")
    sc = make_scenario(spec, "mixed", T, device=device, seed=7)
    active = ((sc.slot_mapping >= 0) & (sc.token_to_req_indices >= 0) & (sc.kv_slot_mapping >= 0)
              & (sc.positions >= 0) & ((sc.positions + 1) % spec.ratio == 0))
    return spec, sc, int(active.nonzero()[0, 0])


def _plain(sc, cache_like) -> torch.Tensor:
    ops.set_debug_checks(None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "bounds_in_kernel", lambda: False)
        mp.setattr(ops, "check_bounds_enabled", lambda: False)
        got = cache_like.clone()
        ops.compress_c4a(*sc.args(got))
    ops.set_debug_checks(True)
    return got


def test_in_range_calls_write_the_unchecked_bytes(cuda_device, kernel_mode):
    _, sc, _ = _case(cuda_device)
    got = sc.poisoned_cache()
    want = _plain(sc, got)
    ops.compress_c4a(*sc.args(got))
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    assert ops.kernel_for(make_spec("c4a", bounds=True), cuda_device).entry.endswith("_bounds")


def test_a_bad_kv_slot_is_skipped_and_raised_after_the_call(cuda_device, kernel_mode):
    _, sc, row = _case(cuda_device)
    slots = sc.kv_slot_mapping.clone()
    slots[row] = sc.k_cache.shape[0] * sc.kv_cache_block_size + 5
    bad = replace(sc, kv_slot_mapping=slots)
    got = sc.poisoned_cache()
    past = rf"^kv_slot_mapping\[{row}\] = {int(slots[row])} is past"
    with pytest.raises(IndexOutOfBoundsError, match=past):
        ops.compress_c4a(*bad.args(got))
    skipped = sc.slot_mapping.clone()
    skipped[row] = -1
    assert torch.equal(got, _plain(replace(sc, slot_mapping=skipped), sc.poisoned_cache()))


def test_a_graph_replay_records_and_check_kernel_bounds_raises(cuda_device, kernel_mode):
    _, sc, row = _case(cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c4a(*sc.args(got))  # loads the kernel and allocates the record, before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.compress_c4a(*sc.args(got))
    req = int(sc.token_to_req_indices[row])
    page = int(sc.positions[row]) // sc.block_size
    sc.block_table[req, page] = sc.state_cache.shape[0]  # in place: the graph reads it on replay
    graph.replay()
    used = rf"block_table\[{req}, {page}\] = \d+ \(used by row \d+\)"
    with pytest.raises(IndexOutOfBoundsError, match=used):
        bounds_kernel.check_kernel_bounds(cuda_device)
    bounds_kernel.check_kernel_bounds(cuda_device)  # cleared


# one checked build of each other kernel (`compressc build --bounds` builds all 21)
OTHERS = [make_spec("indexer_fp8", weight_dtype="bf16", rotate=True),
          make_spec("indexer_mxfp4", weight_dtype="f32"),
          make_spec("c4a", weight_dtype="f32", cache_format="full_bf16"),
          make_spec("c128a_store", weight_dtype="bf16", cache_format="full_fp8")]


@pytest.mark.parametrize("spec", OTHERS, ids=lambda s: f"{s.variant}_bounds")
def test_the_other_checked_builds_write_the_reference_bytes(cuda_device, kernel_mode, spec):
    c128a = spec.kernel == "c128a_store"
    served = [spec, make_spec("c128a_compress", weight_dtype="f32")] if c128a else [spec]
    assert all(ops.kernel_for(s.with_(bounds=True), cuda_device).entry.endswith("_bounds") for s in served)
    if not c128a:
        sc = make_scenario(spec, "mixed", 64, device=cuda_device, seed=8)
        got = sc.poisoned_cache()
        _run_fused(spec, sc, got)
        _assert_same_bytes(spec, got, sc.run_reference(), sc)
        return
    pool_spec, sc, state = _c128a_case(spec, "decode", 64, cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, sc.typed(got)), **sc.op_kwargs())
    _assert_same_bytes(spec, got, _c128a_reference(pool_spec, spec, sc, state), sc)
