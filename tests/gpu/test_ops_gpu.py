"""End to end on the GPU: the runtime's ops against the torch reference (docs/kernels.md §6).

Kernels come from the kernel directory in COMPRESSC_CACHE_DIR (built on a CPU host and
carried here); the ops find them through compressc.runtime.resolve. Each launch writes
into a cache poisoned with a sentinel; the reference writes into a poisoned copy; the
bytes are compared with compressc.acceptance.compare_cache_bytes: no failures, and fp8
one-step codes at most 1e-4 of the codes (one is allowed in a launch of < 10,000 codes).
The loader is also checked alone, on a probe kernel that nvcc builds here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest
import torch

from compressc import reference
from compressc.acceptance import allowed_steps, compare_cache_bytes
from compressc.runtime import loader, ops
from compressc.runtime.args import pack_args
from compressc.runtime.resolve import KernelImage
from compressc.scenarios import KINDS, SENTINEL, make_scenario
from compressc.specs import default_specs, make_spec
from compressc.specs.abi import Param

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROWS = (1, 7, 64, 1000, 4096)
FUSED = [s for s in default_specs() if s.kernel in ("c4a", "indexer_fp8", "indexer_mxfp4")]
STORES = [s for s in default_specs() if s.kernel == "c128a_store"]
FUSED_OPS = {"c4a": ops.compress_c4a, "indexer_fp8": ops.compress_indexer_fp8,
             "indexer_mxfp4": ops.compress_indexer_mxfp4}


def _seed(*parts: object) -> int:
    return sum((i + 1) * sum(map(ord, str(p))) for i, p in enumerate(parts))


def _active_slots(sc) -> torch.Tensor:
    """kv slots of the rows that write (rows past the end of kv_slot_mapping never do)."""
    n = min(sc.T, sc.kv_slot_mapping.numel())
    return sc.kv_slot_mapping[:n][sc.active()[:n]]


def _assert_same_bytes(spec, got: torch.Tensor, want: torch.Tensor, sc) -> None:
    torch.cuda.synchronize()
    report = compare_cache_bytes(
        spec, got, want, _active_slots(sc), kv_cache_block_size=sc.kv_cache_block_size
    )
    assert report.ok, str(report)
    assert report.code_steps <= allowed_steps(spec, report), str(report)


def _run_fused(spec, sc, cache: torch.Tensor) -> None:
    """The op as vLLM calls it: a full cache as its bf16 / fp8 tensor, the format's keywords."""
    FUSED_OPS[spec.kernel](*sc.args(sc.typed(cache)), **sc.op_kwargs())


# -- fused kernels: C4A and the indexer ---------------------------------------------------
@pytest.mark.parametrize("T", ROWS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", FUSED, ids=lambda s: s.variant)
def test_fused_matches_reference(cuda_device, spec, kind, T):
    sc = make_scenario(spec, kind, T, device=cuda_device, seed=_seed(spec.variant, kind, T))
    got = sc.poisoned_cache()
    _run_fused(spec, sc, got)
    _assert_same_bytes(spec, got, sc.run_reference(), sc)


@pytest.mark.parametrize(
    "extra",
    [{"tiny_block": True}, {"short_positions": True}, {"nonboundary_kv": "none"}],
    ids=["tiny_block", "short_positions", "nonboundary_none"],
)
@pytest.mark.parametrize("spec", FUSED, ids=lambda s: s.variant)
def test_fused_edge_cases(cuda_device, spec, extra):
    sc = make_scenario(spec, "mixed", 300, device=cuda_device, seed=_seed(spec.variant, extra), **extra)
    got = sc.poisoned_cache()
    _run_fused(spec, sc, got)
    _assert_same_bytes(spec, got, sc.run_reference(), sc)


# -- C128A: compress then store -----------------------------------------------------------
def _c128a_case(store_spec, kind: str, T: int, device: torch.device, **extra):
    """(pool spec, scenario with the store's cache layout, its state cache); same seed, same rows."""
    pool_spec = make_spec("c128a_compress", store_spec.head, store_spec.quant_block, weight_dtype="f32")
    seed = _seed(store_spec.variant, kind, T, extra)
    sc = make_scenario(store_spec, kind, T, device=device, seed=seed, **extra)
    pooled = make_scenario(
        pool_spec, kind, T, device=device, seed=seed, weight_dtype=store_spec.weight_dtype, **extra
    )
    assert torch.equal(pooled.positions, sc.positions) and torch.equal(
        pooled.kv_slot_mapping, sc.kv_slot_mapping
    )
    return pool_spec, sc, pooled.state_cache


def _c128a_args(sc, state: torch.Tensor, cache: torch.Tensor) -> tuple:
    return (
        state,
        sc.token_to_req_indices,
        sc.positions,
        sc.slot_mapping,
        sc.block_table,
        sc.block_size,
        sc.rms_norm_weight,
        sc.rms_norm_eps,
        sc.cos_sin_cache,
        cache,
        sc.kv_slot_mapping,
        sc.kv_cache_block_size,
    )


def _c128a_reference(pool_spec, store_spec, sc, state: torch.Tensor) -> torch.Tensor:
    rows = (sc.token_to_req_indices, sc.positions, sc.slot_mapping)
    pooled = sc.poisoned_compressed_kv()
    reference.c128a_compress(
        pool_spec, state, *rows, sc.block_table, sc.block_size, pooled, sc.kv_slot_mapping
    )
    want = sc.poisoned_cache()
    reference.c128a_store(
        store_spec,
        pooled,
        *rows,
        sc.rms_norm_weight,
        sc.rms_norm_eps,
        sc.cos_sin_cache,
        want,
        sc.kv_slot_mapping,
        sc.kv_cache_block_size,
        fp8_scale=sc.fp8_scale,
    )
    return want


@pytest.mark.parametrize("T", ROWS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", STORES, ids=lambda s: s.variant)
def test_c128a_matches_reference(cuda_device, spec, kind, T):
    pool_spec, sc, state = _c128a_case(spec, kind, T, cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, sc.typed(got)), **sc.op_kwargs())
    _assert_same_bytes(spec, got, _c128a_reference(pool_spec, spec, sc, state), sc)


@pytest.mark.parametrize(
    "extra", [{"tiny_block": True}, {"short_positions": True}], ids=["tiny_block", "short_positions"]
)
@pytest.mark.parametrize("spec", STORES, ids=lambda s: s.variant)
def test_c128a_edge_cases_with_caller_buffer(cuda_device, spec, extra):
    pool_spec, sc, state = _c128a_case(spec, "mixed", 300, cuda_device, **extra)
    got = sc.poisoned_cache()
    scratch = torch.empty(sc.T + 5, spec.head, device=cuda_device)
    ops.compress_c128a(*_c128a_args(sc, state, sc.typed(got)), compressed_kv=scratch, **sc.op_kwargs())
    _assert_same_bytes(spec, got, _c128a_reference(pool_spec, spec, sc, state), sc)


# -- tiled grids: a CTA loops over a run of rows and skips the inactive ones ----------------
def _force_rows_per_cta(monkeypatch, per_cta: int) -> None:
    """Launch ceil(T / per_cta) CTAs whatever the device size (the kernels read their run from
    gridDim); a "runs:R" kernel unrolls at most R rows, so it gets min(per_cta, R); a
    "wave:N" (tiled) kernel takes any run, a clustered one per cluster of CTAs."""
    from compressc.runtime import loader as loader_module

    def grid(rule, num_rows: int, sm_count: int, resident: int = 0, max_clusters: int = 0) -> int:
        kind, count, cluster = rule.kind, rule.count, rule.ctas_per_row
        if num_rows <= 0 or kind == "rows":
            return max(num_rows, 0)
        run = min(per_cta, count) if kind == "runs" else per_cta
        return -(-num_rows // run) * cluster  # a cluster takes the rows a CTA would

    monkeypatch.setattr(loader_module, "launch_grid", grid)


@pytest.mark.parametrize("per_cta", [2, 3, 32])
@pytest.mark.parametrize("kind", ["prefill", "mixed", "decode"])
@pytest.mark.parametrize("spec", FUSED, ids=lambda s: s.variant)
def test_fused_tiled_runs_match_reference(cuda_device, monkeypatch, spec, kind, per_cta):
    _force_rows_per_cta(monkeypatch, per_cta)
    sc = make_scenario(spec, kind, 1000, device=cuda_device, seed=_seed(spec.variant, kind, per_cta))
    got = sc.poisoned_cache()
    _run_fused(spec, sc, got)
    _assert_same_bytes(spec, got, sc.run_reference(), sc)


@pytest.mark.parametrize("per_cta", [5, 32, 100])
@pytest.mark.parametrize("kind", ["prefill", "mixed", "decode"])
@pytest.mark.parametrize("spec", STORES, ids=lambda s: s.variant)
def test_c128a_tiled_runs_match_reference(cuda_device, monkeypatch, spec, kind, per_cta):
    _force_rows_per_cta(monkeypatch, per_cta)
    pool_spec, sc, state = _c128a_case(spec, kind, 1000, cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, sc.typed(got)), **sc.op_kwargs())
    _assert_same_bytes(spec, got, _c128a_reference(pool_spec, spec, sc, state), sc)


# -- CUDA graphs, empty launches, other threads ---------------------------------------------
def _refresh_inputs(sc, state: torch.Tensor, cache: torch.Tensor, seed: int) -> None:
    """New values in the captured tensors (same shapes): state, gamma, and a re-poisoned cache."""
    gen = torch.Generator(device=state.device).manual_seed(seed)
    state.copy_(torch.randn(state.shape, generator=gen, device=state.device) * 2)
    sc.rms_norm_weight.copy_(
        1 + 0.3 * torch.randn(sc.rms_norm_weight.shape, generator=gen, device=state.device)
    )
    cache.fill_(SENTINEL)


def test_c4a_in_cuda_graph(cuda_device):
    spec = make_spec("c4a", weight_dtype="bf16")
    sc = make_scenario(spec, "mixed", 512, device=cuda_device, seed=11)
    got = sc.poisoned_cache()
    _run_fused(spec, sc, got)  # outside capture: resolves and loads the kernel
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _run_fused(spec, sc, got)
    for seed in (1, 2):
        _refresh_inputs(sc, sc.state_cache, got, seed)
        graph.replay()
        _assert_same_bytes(spec, got, sc.run_reference(), sc)


def test_c128a_in_cuda_graph_with_reserved_scratch(cuda_device):
    spec = make_spec("c128a_store", weight_dtype="f32")
    pool_spec, sc, state = _c128a_case(spec, "decode", 64, cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, got))
    ops.reserve_c128a_scratch(sc.T, spec.head, cuda_device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.compress_c128a(*_c128a_args(sc, state, got))
    _refresh_inputs(sc, state, got, 3)
    graph.replay()
    _assert_same_bytes(spec, got, _c128a_reference(pool_spec, spec, sc, state), sc)


def test_zero_rows_write_nothing(cuda_device):
    spec = make_spec("c4a")
    sc = make_scenario(spec, "prefill", 8, device=cuda_device, seed=0)
    got = sc.poisoned_cache()
    empty_i64 = torch.empty(0, dtype=torch.int64, device=cuda_device)
    args = list(sc.args(got))
    args[1], args[2], args[3], args[10] = empty_i64.int(), empty_i64, empty_i64, empty_i64
    ops.compress_c4a(*args)
    torch.cuda.synchronize()
    assert bool((got == SENTINEL).all())


def test_launch_from_a_new_thread(cuda_device):
    spec = make_spec("indexer_fp8", weight_dtype="f32")
    sc = make_scenario(spec, "decode", 64, device=cuda_device, seed=4)
    got = sc.poisoned_cache()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _run_fused(spec, sc, got)
            torch.cuda.synchronize()
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors, errors
    _assert_same_bytes(spec, got, sc.run_reference(), sc)


# -- the loader alone, on an nvcc-built probe ---------------------------------------------
PROBE_SMEM = 64 * 1024  # above the 48 KiB default: the loader must raise the limit
PROBE_SOURCE = r"""
extern "C" __global__ void probe(long long* out, const float* src, int a, long long b, float c) {
    extern __shared__ float smem[];
    int row = blockIdx.x;
    if (threadIdx.x == 0) smem[16383] = src[row] * 2.0f;  // the last word of 64 KiB
    __syncthreads();
    if (threadIdx.x == 0) {
        out[row * 4 + 0] = a + row;
        out[row * 4 + 1] = b;
        out[row * 4 + 2] = __float_as_int(c);
        out[row * 4 + 3] = __float_as_int(smem[16383]);
    }
}
"""
PROBE_PARAMS = (
    Param("out", "ptr", "i64", 8),
    Param("src", "ptr", "f32", 4),
    Param("a", "i32"),
    Param("b", "i64"),
    Param("c", "f32"),
)


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory, cuda_device) -> KernelImage:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        pytest.skip("nvcc not found")
    arch = loader.device_arch(cuda_device.index)
    tmp = tmp_path_factory.mktemp("probe")
    (tmp / "probe.cu").write_text(PROBE_SOURCE)
    subprocess.run(
        [nvcc, "-cubin", f"-arch={arch}", "-o", str(tmp / "probe.cubin"), str(tmp / "probe.cu")],
        check=True,
        capture_output=True,
    )
    manifest = {
        "key": f"probe-{arch}",
        "entry": "probe",
        "arch": arch,
        "block": [32, 1, 1],
        "smem_dynamic": PROBE_SMEM,
    }
    return KernelImage(manifest, (tmp / "probe.cubin").read_bytes(), "nvcc probe")


def _probe_values(
    out: torch.Tensor, src: torch.Tensor, a: int = -7, b: int = 2**40 + 3, c: float = 0.1
) -> dict:
    return {"out": out.data_ptr(), "src": src.data_ptr(), "a": a, "b": b, "c": c}


def _check_probe(
    out: torch.Tensor, src: torch.Tensor, a: int = -7, b: int = 2**40 + 3, c: float = 0.1
) -> None:
    torch.cuda.synchronize()
    rows = out.shape[0]
    assert out[:, 0].tolist() == [a + r for r in range(rows)]
    assert out[:, 1].tolist() == [b] * rows
    assert out[:, 2].int().view(torch.float32).tolist() == [torch.tensor(c).item()] * rows
    assert out[:, 3].int().view(torch.float32).tolist() == (src.cpu() * 2).tolist()


def test_loader_launch_round_trip(cuda_device, probe_image):
    kernel = loader.load_kernel(probe_image, cuda_device.index)
    assert loader.load_kernel(probe_image, cuda_device.index) is kernel
    out = torch.zeros(5, 4, dtype=torch.int64, device=cuda_device)
    src = torch.arange(5, dtype=torch.float32, device=cuda_device) + 0.5
    _keep, params = pack_args(PROBE_PARAMS, _probe_values(out, src))
    kernel.launch(5, params)
    _check_probe(out, src)


def test_loader_launch_in_cuda_graph(cuda_device, probe_image):
    kernel = loader.load_kernel(probe_image, cuda_device.index)
    out = torch.zeros(3, 4, dtype=torch.int64, device=cuda_device)
    src = torch.ones(3, device=cuda_device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _keep, params = pack_args(PROBE_PARAMS, _probe_values(out, src, a=1))
        kernel.launch(3, params)
    del _keep, params  # the driver copied the values at capture
    src.copy_(torch.tensor([4.0, 5.0, 6.0]))
    graph.replay()
    _check_probe(out, src, a=1)


def test_loader_errors_name_the_call(cuda_device, probe_image):
    bad = KernelImage(dict(probe_image.manifest, key="garbage"), b"not a cubin", "test")
    with pytest.raises(
        loader.CudaError, match=r"cuModuleLoadData failed: CUDA_ERROR_\w+ \(\d+\) while loading probe"
    ):
        loader.load_kernel(bad, cuda_device.index)
    missing = KernelImage(
        dict(probe_image.manifest, key="missing-entry", entry="nope"), probe_image.cubin, "test"
    )
    with pytest.raises(loader.CudaError, match="cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND"):
        loader.load_kernel(missing, cuda_device.index)


def test_loader_refuses_another_arch(cuda_device, probe_image):
    cc = torch.cuda.get_device_capability(cuda_device)
    other = "sm_100a" if cc != (10, 0) else "sm_90a"
    image = KernelImage(dict(probe_image.manifest, key="other-arch", arch=other), probe_image.cubin, "test")
    want = loader.device_arch(cuda_device.index)
    with pytest.raises(
        loader.ArchMismatchError,
        match=rf"kernel built for {other} cannot run on cuda:\d "
        rf"\(compute capability {cc[0]}\.{cc[1]}\); build it for this GPU with "
        rf"`compressc build --arch {want}`",
    ):
        loader.load_kernel(image, cuda_device.index)
