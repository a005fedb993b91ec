"""The fused CSA launch on the GPU (docs/kernels.md §12): `ops.compress_csa` writes both caches
byte for byte as the reference (compressc.acceptance, as tests/gpu/test_ops_gpu.py judges the
single kernels) and as the two separate kernels do, into caches poisoned with a sentinel, over
every scenario kind, several T, the edge cases, and inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from compressc.acceptance import compare_cache_bytes
from compressc.runtime import csa, ops
from compressc.scenarios import KINDS, SENTINEL
from compressc.scenarios_csa import csa_scenario
from compressc.specs import default_specs, make_spec
from compressc.specs.csa import parts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROWS = (1, 7, 64, 1000, 4096)
SHIPPED = [s for s in default_specs() if s.kernel == "csa"]
SINGLE = {
    "c4a": ops.compress_c4a,
    "indexer_fp8": ops.compress_indexer_fp8,
    "indexer_mxfp4": ops.compress_indexer_mxfp4,
}


def _seed(*parts_: object) -> int:
    return sum((i + 1) * sum(map(ord, str(p))) for i, p in enumerate(parts_))


def _accepted(spec, got: torch.Tensor, sc) -> None:
    torch.cuda.synchronize()
    n = min(sc.T, sc.kv_slot_mapping.numel())
    report = compare_cache_bytes(
        spec,
        got,
        sc.run_reference(),
        sc.kv_slot_mapping[:n][sc.active()[:n]],
        kv_cache_block_size=sc.kv_cache_block_size,
    )
    assert report.ok, str(report)
    assert report.code_steps <= max(1, 1e-4 * report.codes), str(report)


def _fused(sc) -> tuple[torch.Tensor, torch.Tensor]:
    main, indexer = sc.poisoned_caches()
    ops.compress_csa(**sc.op_kwargs(main, indexer))
    return main, indexer


def _check(sc, main: torch.Tensor, indexer: torch.Tensor) -> None:
    for part, got, s in zip(parts(sc.spec), (main, indexer), sc.scenarios, strict=True):
        _accepted(part, got, s)
        assert (got == SENTINEL).any()


@pytest.mark.parametrize("T", ROWS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.variant)
def test_fused_matches_reference(cuda_device, spec, kind, T):
    sc = csa_scenario(spec, kind, T, device=cuda_device, seed=_seed(spec.variant, kind, T))
    _check(sc, *_fused(sc))


@pytest.mark.parametrize(
    "extra",
    [{"tiny_block": True}, {"short_positions": True}, {"nonboundary_kv": "none"}],
    ids=["tiny_block", "short_positions", "nonboundary_none"],
)
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.variant)
def test_fused_edge_cases(cuda_device, spec, extra):
    sc = csa_scenario(spec, "mixed", 300, device=cuda_device, seed=_seed(spec.variant, *extra), **extra)
    _check(sc, *_fused(sc))


@pytest.mark.parametrize("kind", ("decode", "mixed"))
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.variant)
def test_fused_equals_the_two_separate_kernels(cuda_device, spec, kind):
    """Same schedules, same lanes: the fused kernel's bytes are the separate kernels' bytes."""
    sc = csa_scenario(spec, kind, 777, device=cuda_device, seed=_seed(spec.variant, "alone"))
    main, indexer = _fused(sc)
    for part, got, s in zip(parts(spec), (main, indexer), sc.scenarios, strict=True):
        alone = s.poisoned_cache()
        SINGLE[part.kernel](*s.args(s.typed(alone)), **s.op_kwargs())
        torch.cuda.synchronize()
        assert torch.equal(got, alone), part.variant


def test_fused_rotated_f32_is_served_too(cuda_device):
    """A pair outside the shipped subset (JIT or `compressc build --spec csa`) behaves the same."""
    # built by: compressc build --arch sm90 --spec csa --cache-format full_bf16 --rotate --weight-dtype f32
    spec = make_spec("csa", cache_format="full_bf16", indexer="indexer_fp8", rotate=True, weight_dtype="f32")
    sc = csa_scenario(spec, "mixed", 200, device=cuda_device, seed=11)
    _check(sc, *_fused(sc))


@pytest.mark.parametrize("debug", (False, True), ids=("fast", "checked"))
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.variant)
def test_above_the_threshold_two_launches_write_the_fused_bytes(cuda_device, monkeypatch, spec, debug):
    """Above FUSED_MAX_T rows compress_csa launches the two parts' own kernels: the same bytes."""
    sc = csa_scenario(spec, "mixed", 300, device=cuda_device, seed=_seed(spec.variant, "split"))
    fused = _fused(sc)
    monkeypatch.setattr(csa, "FUSED_MAX_T", 299)
    ops.set_debug_checks(debug)
    try:
        split = _fused(sc)
    finally:
        ops.set_debug_checks(None)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(fused, split, strict=True))
    _check(sc, *split)


@pytest.mark.parametrize("max_t", (None, 0), ids=("fused", "split"))
@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.variant)
def test_fused_in_a_cuda_graph(cuda_device, monkeypatch, spec, max_t):
    """Captured once, replayed on new step data in the same buffers: both caches right each time."""
    if max_t is not None:
        monkeypatch.setattr(csa, "FUSED_MAX_T", max_t)
    sc = csa_scenario(spec, "decode", 256, device=cuda_device, seed=_seed(spec.variant, "graph"))
    main, indexer = sc.poisoned_caches()
    kwargs = sc.op_kwargs(main, indexer)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ops.compress_csa(**kwargs)  # warm: resolve, load, check outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            ops.compress_csa(**kwargs)
    for step in range(2):
        main.fill_(SENTINEL)
        indexer.fill_(SENTINEL)
        for s in sc.scenarios:  # new state values, same addresses
            s.state_cache.copy_(torch.randn_like(s.state_cache) * (1 + step))
        graph.replay()
        torch.cuda.synchronize()
        _check(sc, main, indexer)


def test_one_tensor_for_both_parts_is_served_from_the_signature_cache(cuda_device, monkeypatch):
    """An engine passing one rope table and one slot mapping to both parts: right bytes, and only
    the first call runs the checks (torch's guard refuses a tensor given twice: one guard each)."""
    from compressc.runtime import csa

    checks = []
    real = csa.checked_csa
    monkeypatch.setattr(csa, "checked_csa", lambda *a: checks.append(1) or real(*a))
    ops.set_debug_checks(False)
    sc = csa_scenario(SHIPPED[0], "mixed", 300, device=cuda_device, seed=5)
    sc.indexer.cos_sin_cache = sc.main.cos_sin_cache
    sc.indexer.slot_mapping = sc.main.slot_mapping
    main, indexer = sc.poisoned_caches()  # the same caches every call (their address is in the key)
    for _ in range(3):
        main.fill_(SENTINEL)
        indexer.fill_(SENTINEL)
        ops.compress_csa(**sc.op_kwargs(main, indexer))
        _check(sc, main, indexer)
    ops.set_debug_checks(None)
    assert len(checks) == 1
