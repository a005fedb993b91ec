"""The dispatchers called the way vLLM calls them: routed to compressc ops, or back to vLLM's own.

CPU tensors with a stand-in device and kernel (as tests/test_runtime_ops.py): the launch values
show which kernel ran on which tensors. A fallback hands vLLM's callable every keyword it gave us.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from test_runtime_ops import FakeKernel

from compressc.integrations import vllm as plugin
from compressc.runtime import c128a_split, ops

# (compress ratio, head, state page rows, compressed tokens per page, bytes per token, layout)
SHAPES = {"c4a": (4, 512, 4, 64, 584, (64, 576, 8)), "c128a": (128, 512, 8, 2, 584, (64, 576, 8)),
          "indexer": (4, 128, 4, 64, 132, (128, 128, 4))}
T = 5


def vllm_kwargs(kind: str = "c4a", rows: int = T, **changes) -> dict:
    """The keywords vLLM 0.34's DeepseekCompressor passes (tests/data/vllm_dsv4_interface.json)."""
    ratio, head, bs, B, token_bytes, (qb, stride, scale) = SHAPES[kind]
    width = head * (2 if ratio == 4 else 1)
    kwargs = {
        "state_cache": torch.randn(6, bs, 2 * width), "num_actual": rows,
        "token_to_req_indices": torch.zeros(rows, dtype=torch.int32),
        "positions": torch.arange(rows, dtype=torch.int64), "slot_mapping": torch.arange(rows),
        "block_table": torch.arange(6, dtype=torch.int32).reshape(1, 6), "block_size": bs,
        "state_width": width, "cos_sin_cache": torch.randn(64, 64),
        "kv_cache": torch.zeros(3, B, token_bytes, dtype=torch.uint8),
        "k_cache_metadata": SimpleNamespace(slot_mapping=torch.arange(rows)),
        "pdl_kwargs": {"launch_pdl": False},
        "head_dim": head, "rope_head_dim": 64, "compress_ratio": ratio, "overlap": ratio == 4,
        "use_fp4_cache": False, "rms_norm_weight": torch.ones(head, dtype=torch.bfloat16),
        "rms_norm_eps": 1e-6,
        "quant_block": qb, "token_stride": stride, "scale_dim": scale,
    }
    return kwargs | changes


class Original:
    """vLLM's callable: records its calls."""

    c4_store = "vllm's kernel"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs) -> str:
        self.calls.append(kwargs)
        return "vllm ran it"


@pytest.fixture
def launches(monkeypatch, caplog):
    log: list = []
    monkeypatch.setattr(FakeKernel, "overlaps", [])
    monkeypatch.setattr(ops, "check_device", lambda tensors: torch.device("cuda", 0))
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: FakeKernel(spec, log))
    monkeypatch.setattr(plugin, "_device_problem", lambda device: None)  # a CPU tensor as if on a GPU
    ops.set_debug_checks(None)  # forget prepared launches of earlier tests' (stand-in) kernels
    monkeypatch.setattr(plugin, "_logged", set())
    caplog.set_level(logging.INFO, logger="vllm.compressc")
    return log


def _variants(log: list) -> list[str]:
    return [variant for variant, _, _ in log]


def test_cute_c4a_reaches_the_kernel_with_vllms_tensors(launches):
    kwargs = vllm_kwargs("c4a", store_full_kv=False, store_full_fp8=False, fp8_scale=None)
    original = Original()
    assert plugin.CuteDispatcher(original, "cute")(**kwargs) is None and original.calls == []
    ((variant, rows, v),) = launches
    assert variant == "c4a_h512_q64_r64_bf16" and rows == T
    assert v["k_cache"] == kwargs["kv_cache"].data_ptr() and v["k_cache_page_stride"] == 64 * 584
    assert v["kv_slot_mapping"] == kwargs["k_cache_metadata"].slot_mapping.data_ptr()
    assert v["kv_block_shift"] == 6 and v["state_block_shift"] == 2
    assert v["state_cache"] == kwargs["state_cache"].data_ptr() and v["num_rows"] == T


def test_cute_c128a_runs_both_kernels(launches, monkeypatch):
    monkeypatch.setattr(ops, "scratch_buffer", lambda device, rows, head: torch.zeros(rows, head))
    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 0)  # the pair at every T
    plugin.CuteDispatcher(Original(), "cute")(**vllm_kwargs("c128a"))
    assert _variants(launches) == ["c128a_compress_h512_q64_r64_f32", "c128a_store_h512_q64_r64_bf16"]
    assert launches[1][2]["kv_block_shift"] == 1


def test_cute_c128a_at_small_t_is_one_launch(launches, monkeypatch):
    monkeypatch.setattr(ops, "workspace_pointer", lambda device, rows, head: 0x2000)
    plugin.CuteDispatcher(Original(), "cute")(**vllm_kwargs("c128a"))
    assert _variants(launches) == ["c128a_split_h512_q64_r64_bf16"]
    assert launches[0][2]["split_workspace"] == 0x2000 and launches[0][2]["kv_block_shift"] == 1


def test_triton_indexer_and_head_512(launches):
    dispatcher = plugin.TritonDispatcher(Original(), "triton")
    dispatcher(**vllm_kwargs("indexer", rms_norm_weight=torch.ones(128)))
    dispatcher(**vllm_kwargs("c4a"))
    assert _variants(launches) == ["indexer_fp8_h128_q128_r64_f32", "c4a_h512_q64_r64_bf16"]
    assert launches[0][2]["k_cache_page_stride"] == 64 * 132


def test_full_caches_reach_their_format(launches, monkeypatch):
    monkeypatch.setattr(ops, "scratch_buffer", lambda device, rows, head: torch.zeros(rows, head))
    dispatcher = plugin.CuteDispatcher(Original(), "cute")
    bf16 = torch.zeros(3, 64, 512, dtype=torch.bfloat16)
    dispatcher(**vllm_kwargs("c4a", store_full_kv=True, kv_cache=bf16))
    scale = torch.tensor([0.5])
    fp8 = torch.zeros(3, 64, 512, dtype=torch.float8_e4m3fn)
    dispatcher(**vllm_kwargs("c4a", store_full_kv=True, store_full_fp8=True, fp8_scale=scale, kv_cache=fp8))
    dispatcher(**vllm_kwargs("c128a", store_full_kv=True, store_full_fp8=True, fp8_scale=None,
                             kv_cache=torch.zeros(3, 2, 512, dtype=torch.float8_e4m3fn)))
    assert _variants(launches) == ["c4a_h512_q64_r64_bf16_full_bf16", "c4a_h512_q64_r64_bf16_full_fp8",
                                   "c128a_compress_h512_q64_r64_f32",
                                   "c128a_store_h512_q64_r64_bf16_full_fp8"]
    assert launches[0][2]["k_cache_token_stride"] == 1024 and launches[1][2]["k_cache_token_stride"] == 512
    assert launches[1][2]["fp8_scale"] == scale.data_ptr()
    assert launches[3][2]["fp8_scale"] != 0  # vLLM's stand-in for a missing scale: ones(1)


def test_triton_mxfp4_and_rotated_indexers(launches):
    dispatcher = plugin.TritonDispatcher(Original(), "triton")
    mxfp4 = {"use_fp4_cache": True, "quant_block": 32, "token_stride": 64,
             "kv_cache": torch.zeros(3, 64, 68, dtype=torch.uint8)}
    dispatcher(**vllm_kwargs("indexer", **mxfp4))
    dispatcher(**vllm_kwargs("indexer", **mxfp4), rotate=True)
    dispatcher(**vllm_kwargs("indexer"), rotate=True)
    assert _variants(launches) == ["indexer_mxfp4_h128_q32_r64_bf16", "indexer_mxfp4_h128_q32_r64_bf16_rot",
                                   "indexer_fp8_h128_q128_r64_bf16_rot"]
    assert launches[0][2]["k_cache_page_stride"] == 64 * 68


def test_a_c128_ring_call_reaches_the_ring_kernel(launches, monkeypatch):
    from compressc.runtime import ring as ring_ops

    monkeypatch.setattr(ring_ops, "check_device", lambda tensors: torch.device("cuda", 0))
    monkeypatch.setattr(ring_ops, "scratch_buffer", lambda device, rows, head: torch.zeros(rows, head))
    kwargs = vllm_kwargs("c128a", block_size=128, state_cache=torch.randn(3, 128, 1024))
    ring = {"is_circular": True, "kv": torch.randn(T, 512), "score": torch.randn(T, 512),
            "ape": torch.randn(128, 512), "query_start_loc": torch.tensor([0, T], dtype=torch.int32)}
    plugin.CuteDispatcher(Original(), "cute")(**kwargs, **ring)
    assert _variants(launches) == ["c128a_compress_ring_h512_q64_r64_f32", "c128a_store_h512_q64_r64_bf16"]
    assert launches[0][2]["kv"] == ring["kv"].data_ptr() and launches[0][2]["ring_capacity"] == 128


def test_a_ring_call_without_its_rows_goes_to_vllm(launches, caplog):
    original = Original()
    ring = {"is_circular": True, "query_start_loc": torch.zeros(2, dtype=torch.int32)}
    kwargs = vllm_kwargs("c128a") | ring
    assert plugin.CuteDispatcher(original, "cute")(**kwargs) == "vllm ran it" and launches == []
    assert [r.getMessage() for r in caplog.records if r.name == "vllm.compressc"] == [
        "compressc: vLLM's own cute runs these calls: is_circular=True without kv, score, ape: the ring "
        "kernel reads this launch's raw rows"]


def test_newer_keywords_are_accepted_and_ignored(launches):
    extra = {"kv": torch.zeros(1), "score": torch.zeros(1), "is_circular": False, "int8_ds_mla": False,
             "some_later_keyword": object()}
    plugin.CuteDispatcher(Original(), "cute")(**vllm_kwargs("c4a"), **extra)
    assert _variants(launches) == ["c4a_h512_q64_r64_bf16"]


def test_num_actual_limits_the_rows(launches):
    plugin.TritonDispatcher(Original(), "triton")(**vllm_kwargs("c4a", num_actual=3))
    assert launches[0][1] == 3


FALLBACKS = [
    ("cute", {"store_full_fp8": True, "kv_cache": torch.zeros(3, 64, 512, dtype=torch.float8_e4m3fn)},
     "store_full_fp8=True without store_full_kv=True (vLLM rejects it too)"),
    ("cute", {"store_full_kv": True, "kv_cache": torch.zeros(3, 64, 1024, dtype=torch.uint8)},
     "kv_cache is 3-D torch.uint8: compressc writes this cache as 3-D torch.bfloat16 [pages, block, ...]"),
    ("cute", {"is_circular": True, "query_start_loc": torch.zeros(2, dtype=torch.int32)},
     "the C128 ring state (is_circular=True) is not a compressc format yet"),
    ("cute", {"int8_ds_mla": True}, "the int8_ds_mla cache (int8_ds_mla=True) is not a compressc format yet"),
    ("cute", {"rope_head_dim": 32}, "rope_head_dim=32: compressc kernels rotate 64 dims"),
    ("cute", {"kv_cache": torch.zeros(3, 64 * 584, dtype=torch.uint8)},
     "kv_cache is 2-D torch.uint8: compressc writes this cache as 3-D torch.uint8 [pages, block, ...]"),
    ("triton", {"use_fp4_cache": True, "quant_block": 32, "token_stride": 128},
     "indexer layout quant_block/token_stride/scale_dim = (32, 128, 4), expected (32, 64, 4)"),
    ("cute", {"rotate": True}, "Hadamard-rotated keys (rotate=True) is not a compressc format yet"),
    ("triton", {"head_dim": 256, "quant_block": 64, "token_stride": 576, "scale_dim": 8},
     "head_dim=256: compressc serves the 512-wide main KV and the 128-wide indexer"),
    ("triton", {"compress_ratio": 128}, "compress_ratio=128: expected one of (4,)"),
    ("triton", {"scale_dim": 8},
     "indexer layout quant_block/token_stride/scale_dim = (128, 128, 8), expected (128, 128, 4)"),
]


@pytest.mark.parametrize("which,changes,reason", FALLBACKS, ids=[r[2][:40] for r in FALLBACKS])
def test_unserved_calls_go_to_vllm_with_one_info_line(launches, caplog, which, changes, reason):
    kind = "c4a" if which == "cute" else "indexer"
    kwargs = vllm_kwargs(kind, **changes)
    original = Original()
    dispatcher = (plugin.CuteDispatcher if which == "cute" else plugin.TritonDispatcher)(original, "its_name")
    assert dispatcher(**kwargs) == "vllm ran it"
    assert dispatcher(**kwargs) == "vllm ran it"
    assert launches == []
    defaults = {"store_full_kv": False, "store_full_fp8": False, "fp8_scale": None} if which == "cute" else {}
    assert original.calls == [defaults | kwargs] * 2  # every keyword, as vLLM gave it
    lines = [r.getMessage() for r in caplog.records if r.name == "vllm.compressc"]
    assert lines == [f"compressc: vLLM's own its_name runs these calls: {reason}"]


def test_devices_compressc_does_not_serve(monkeypatch):
    assert plugin._device_problem(-1) == "kv_cache is not on a CUDA device"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 6))
    assert plugin._device_problem(0) == (
        "cuda:0 is sm_86: compressc kernels are built for sm_90a, sm_100a, sm_100f, sm_103a, sm_120a")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert plugin._device_problem(0) is None


def test_cpu_tensors_fall_back(caplog, monkeypatch):
    monkeypatch.setattr(plugin, "_logged", set())
    original = Original()
    plugin.CuteDispatcher(original, "cute")(**vllm_kwargs("c4a"))
    assert len(original.calls) == 1


def test_a_route_is_decided_once_per_layer_signature(launches, monkeypatch):
    decided = []
    real = plugin.route_cute
    monkeypatch.setattr(plugin, "route_cute", lambda *a: decided.append(a) or real(*a))
    dispatcher = plugin.CuteDispatcher(Original(), "cute")
    for rows in (5, 3, 5):
        dispatcher(**vllm_kwargs("c4a", rows=rows))
    assert len(decided) == 1 and len(launches) == 3
