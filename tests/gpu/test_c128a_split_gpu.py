"""c128a_split on the GPU (docs/kernels.md §13): compress_c128a at small T runs one launch whose
S CTAs per row merge through the global workspace. Bytes against the reference on poisoned
caches, the counters back at 0 after every launch, repeated launches identical (no race in
the election), a CTA looping over several rows, and replays of a captured graph."""

from __future__ import annotations

import pytest
import torch

from compressc.acceptance import allowed_steps, compare_cache_bytes
from compressc.runtime import c128a_split, ops
from compressc.scenarios import SENTINEL, make_scenario
from compressc.specs import make_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# decode T = 1, 8, 32 (every row active); prefill T = 128..512 (1-4 active rows); mixed rows
CASES = [("decode", 1), ("decode", 8), ("decode", 32), ("prefill", 128), ("prefill", 256),
         ("prefill", 384), ("prefill", 512), ("mixed", 300), ("decode", 512)]


@pytest.fixture(autouse=True)
def _split_up_to_512(monkeypatch):
    """The runtime takes the split kernel up to T = 32; these cases drive it up to 512 (it is
    correct at any T: the limit is a speed choice, docs/kernels.md §13)."""
    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 512)


def _run(sc, cache: torch.Tensor) -> None:
    ops.compress_c128a(*sc.args(cache))


def _check(spec, sc, got: torch.Tensor) -> None:
    torch.cuda.synchronize()
    n = min(sc.T, sc.kv_slot_mapping.numel())
    report = compare_cache_bytes(spec, got, sc.run_reference(), sc.kv_slot_mapping[:n][sc.active()[:n]],
                                 kv_cache_block_size=sc.kv_cache_block_size)
    assert report.ok, str(report)
    assert report.code_steps <= allowed_steps(spec, report), str(report)


def _repeats_the_same_bytes(sc, times: int) -> None:
    """`times` more launches on fresh poisoned caches write what the first one wrote."""
    first = sc.poisoned_cache()
    _run(sc, first)
    for _ in range(times):
        again = sc.poisoned_cache()
        _run(sc, again)
        torch.cuda.synchronize()
        assert torch.equal(again, first)


def _counters_are_zero(device: torch.device, T: int) -> bool:
    counters = c128a_split.split_workspace(device, T, 512)[:, 0].contiguous().view(torch.int32)
    return bool((counters == 0).all())


@pytest.mark.parametrize(("kind", "T"), CASES)
@pytest.mark.parametrize("weight", ["bf16", "f32"])
def test_split_matches_reference(cuda_device, weight, kind, T):
    spec = make_spec("c128a_split", weight_dtype=weight)
    sc = make_scenario(spec, kind, T, device=cuda_device, seed=T * 7 + len(kind) + len(weight))
    got = sc.poisoned_cache()
    _run(sc, got)
    assert (cuda_device.index, spec.variant) in ops._KERNELS  # the one-launch kernel ran
    _check(spec, sc, got)
    assert _counters_are_zero(cuda_device, T)


EDGES = [{"tiny_block": True}, {"short_positions": True}, {"nonboundary_kv": "none"}]


@pytest.mark.parametrize("extra", EDGES,
                         ids=["tiny_block", "short_positions", "nonboundary_none"])
def test_split_edge_cases(cuda_device, extra):
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "mixed", 300, device=cuda_device, seed=31, **extra)
    got = sc.poisoned_cache()
    _run(sc, got)
    _check(spec, sc, got)


def test_repeated_launches_give_the_same_bytes(cuda_device):
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "decode", 32, device=cuda_device, seed=5)
    _repeats_the_same_bytes(sc, 20)
    assert _counters_are_zero(cuda_device, 32)


@pytest.mark.parametrize("per_group", [2, 3, 32])
def test_row_groups_looping_over_rows(cuda_device, monkeypatch, per_group):
    """Fewer row groups than rows: the S CTAs of a group take several rows one after another."""
    from compressc.runtime import loader as loader_module

    def grid(rule, num_rows: int, sm_count: int, resident: int = 0, max_clusters: int = 0) -> int:
        return -(-num_rows // per_group) * rule.ctas_per_row

    monkeypatch.setattr(loader_module, "launch_grid", grid)
    ops.set_debug_checks(True)  # the loader's own launch, which reads the patched grid
    try:
        spec = make_spec("c128a_split", weight_dtype="f32")
        sc = make_scenario(spec, "decode", 100, device=cuda_device, seed=per_group)
        got = sc.poisoned_cache()
        _run(sc, got)
        _check(spec, sc, got)
    finally:
        ops.set_debug_checks(None)


def test_split_in_cuda_graph(cuda_device):
    spec = make_spec("c128a_split", weight_dtype="bf16")
    sc = make_scenario(spec, "decode", 8, device=cuda_device, seed=13)
    got = sc.poisoned_cache()
    _run(sc, got)  # outside capture: resolves and loads the kernel, allocates the workspace
    ops.reserve_c128a_scratch(sc.T, spec.head, cuda_device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _run(sc, got)
    for seed in (1, 2, 3):
        gen = torch.Generator(device=cuda_device).manual_seed(seed)
        sc.state_cache.copy_(torch.randn(sc.state_cache.shape, generator=gen, device=cuda_device) * 2)
        got.fill_(SENTINEL)
        graph.replay()
        _check(spec, sc, got)
    assert _counters_are_zero(cuda_device, sc.T)


def test_above_the_threshold_the_pair_runs(cuda_device, monkeypatch):
    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 0)
    ops.set_debug_checks(None)
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "prefill", 256, device=cuda_device, seed=3)
    got = sc.poisoned_cache()
    _run(sc, got)
    _check(spec, sc, got)  # the pair's bytes meet the same reference
