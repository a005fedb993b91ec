"""What issue 19 (several GPUs) can check without GPUs: the per-device kernel table, the
multi-GPU script's rank layout and its refusal on a host without CUDA. The lock under N
processes is tests/test_cache_concurrency.py's (8 processes, one compile)."""

from __future__ import annotations

import torch

from benchmarks import multi_gpu
from compressc.runtime import loader, ops
from compressc.specs import make_spec


def test_each_device_loads_its_own_module(monkeypatch):
    """A kernel is loaded once per device index and served from that device's entry after."""
    loads = []
    monkeypatch.setattr(ops, "_KERNELS", {})
    monkeypatch.setattr(ops, "find_kernel", lambda spec, arch: ("image", spec.variant, arch))
    monkeypatch.setattr(ops, "check_image", lambda image: None)
    monkeypatch.setattr(loader, "device_arch", lambda index: "sm_90a")
    monkeypatch.setattr(loader, "load_kernel", lambda image, index: loads.append(index) or (index, image[1]))
    spec = make_spec("c4a")
    got = [ops.kernel_for(spec, torch.device("cuda", d)) for d in (1, 0, 1, 0, 1)]
    assert loads == [1, 0]
    assert got == [(1, spec.variant), (0, spec.variant)] * 2 + [(1, spec.variant)]
    assert set(ops._KERNELS) == {(0, spec.variant), (1, spec.variant)}


def test_current_device_stands_for_a_bare_cuda_device(monkeypatch):
    monkeypatch.setattr(ops, "_KERNELS", {(3, make_spec("c4a").variant): "on 3"})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert ops.kernel_for(make_spec("c4a"), torch.device("cuda")) == "on 3"


def test_ranks_get_their_own_gpu_and_nccl_only_then():
    assert [multi_gpu.device_of(r, 8) for r in range(8)] == list(range(8))
    assert [multi_gpu.device_of(r, 2) for r in range(4)] == [0, 1, 0, 1]
    assert multi_gpu.backend_for(8, 8) == "nccl" and multi_gpu.backend_for(2, 8) == "nccl"
    assert multi_gpu.backend_for(4, 1) == "gloo"


def test_script_refuses_a_host_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert multi_gpu.main([]) == 2
    assert "needs CUDA GPUs" in capsys.readouterr().err
