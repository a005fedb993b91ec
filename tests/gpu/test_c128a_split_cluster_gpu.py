"""c128a_split's cluster merge on the GPU (docs/kernels.md §13, `thread-map{cluster-split=S}`): the
row's S CTAs are one thread-block cluster (cuLaunchKernelEx with the cluster attribute), rank 0
folds the DSMEM partials and stores the row. A tunable candidate, not shipped: its kernels are
built with the other special schedules and carried over (tests/gpu/test_schedules_gpu.py):

    python tests/gpu/test_schedules_gpu.py build/kernels-schedules        (build host, cutlass)
    COMPRESSC_CACHE_DIR=build/kernels COMPRESSC_SCHEDULES_DIR=build/kernels-schedules \\
        python -m pytest -m gpu tests/gpu/test_c128a_split_cluster_gpu.py   (GPU host)

compress_c128a's c128a_split launches are routed to the schedule's kernel; bytes against the
reference on poisoned caches at decode T = 1, 32 and prefill T = 128, 512, the workspace never
written (no partial, no counter), repeated launches identical, through the checked launch path,
and in a captured CUDA graph replayed twice.
"""

from __future__ import annotations

import pytest
import torch
from test_c128a_split_gpu import _check, _repeats_the_same_bytes, _run
from test_schedules_gpu import SPLIT_SCHEDULES, _find

from compressc.runtime import c128a_split, loader, ops
from compressc.scenarios import SENTINEL, make_scenario
from compressc.specs import make_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = [("decode", 1), ("decode", 32), ("prefill", 128), ("prefill", 512)]


@pytest.fixture(params=[(p, w) for p in SPLIT_SCHEDULES for w in ("bf16", "f32")],
                ids=lambda pw: f"{pw[0].split(',')[0]}-{pw[1]}")
def routed(request, cuda_device, monkeypatch):
    """(spec, the loaded cluster kernel, the variants launched): compress_c128a's c128a_split
    launches go to the schedule's kernel; a fresh (zeroed) workspace; no prepared signature of an
    earlier test's kernel is reused (set_debug_checks clears them, before and after)."""
    pipeline, weight = request.param
    spec = make_spec("c128a_split", weight_dtype=weight)
    loaded = loader.load_kernel(_find(spec, pipeline), cuda_device.index or 0)
    assert loaded.cluster == loaded.grid.cluster > 1 and loaded.grid.split == 1
    used: list[str] = []
    shipped = ops.kernel_for

    def kernel_for(s, device):
        used.append(s.variant)
        return loaded if s.variant == spec.variant else shipped(s, device)

    monkeypatch.setattr(ops, "kernel_for", kernel_for)
    monkeypatch.setattr(c128a_split, "_WORKSPACE", {})
    # the runtime takes the split kernel up to T = 32; prefill T = 512 is driven through it too
    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 512)
    ops.set_debug_checks(False)
    yield spec, loaded, used
    ops.set_debug_checks(None)



def _workspace_untouched(device: torch.device) -> bool:
    return all(not bool(w.any()) for w in c128a_split._WORKSPACE.get(device, []))


@pytest.mark.parametrize(("kind", "T"), CASES)
def test_cluster_merge_matches_reference(routed, cuda_device, kind, T):
    spec, _, used = routed
    sc = make_scenario(spec, kind, T, device=cuda_device, seed=T * 11 + len(kind))
    got = sc.poisoned_cache()
    _run(sc, got)
    assert used == [spec.variant]  # one launch: the cluster kernel, not the pair
    _check(spec, sc, got)
    assert _workspace_untouched(cuda_device)


def test_cluster_merge_through_the_checked_launch(routed, cuda_device):
    """COMPRESSC_DEBUG_CHECKS' path: the loader's own launch (cuLaunchKernelEx with the cluster)."""
    spec, _, _ = routed
    ops.set_debug_checks(True)
    sc = make_scenario(spec, "decode", 32, device=cuda_device, seed=77)
    got = sc.poisoned_cache()
    _run(sc, got)
    _check(spec, sc, got)


def test_cluster_merge_repeats_the_same_bytes(routed, cuda_device):
    spec, _, _ = routed
    sc = make_scenario(spec, "decode", 32, device=cuda_device, seed=5)
    _repeats_the_same_bytes(sc, 10)


@pytest.mark.parametrize(("kind", "T"), [("decode", 32), ("prefill", 512)])
def test_cluster_merge_in_cuda_graph(routed, cuda_device, kind, T):
    spec, _, _ = routed
    sc = make_scenario(spec, kind, T, device=cuda_device, seed=T + 13)
    got = sc.poisoned_cache()
    _run(sc, got)  # outside capture: loads the kernel, allocates the (unused) workspace
    ops.reserve_c128a_scratch(sc.T, spec.head, cuda_device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _run(sc, got)
    for seed in (1, 2):  # replayed twice, each on new state values
        gen = torch.Generator(device=cuda_device).manual_seed(seed)
        sc.state_cache.copy_(torch.randn(sc.state_cache.shape, generator=gen, device=cuda_device) * 2)
        got.fill_(SENTINEL)
        graph.replay()
        _check(spec, sc, got)
    assert _workspace_untouched(cuda_device)
