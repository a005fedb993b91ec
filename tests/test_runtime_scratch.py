"""compress_c128a's per-device scratch buffer: grown outside capture, reused inside it."""

from __future__ import annotations

import pytest
import torch

from compressc.runtime import ops
from compressc.runtime.ops import scratch_buffer


def test_scratch_grows_and_is_reused(monkeypatch):
    monkeypatch.setattr(ops, "_SCRATCH", {})
    cpu = torch.device("cpu")
    a = scratch_buffer(cpu, 4, 512)
    b = scratch_buffer(cpu, 2, 512, capturing=True)  # fits: no allocation, allowed during capture
    assert a.shape == (4, 512) and b.data_ptr() == a.data_ptr()
    c = scratch_buffer(cpu, 5, 512)
    old, new = ops._SCRATCH[cpu]
    assert c.shape == (5, 512) and new.numel() == 2 * 4 * 512 and c.data_ptr() == new.data_ptr()
    assert old.data_ptr() == a.data_ptr()  # kept alive: a captured graph may still use it


def test_scratch_cannot_grow_during_capture(monkeypatch):
    monkeypatch.setattr(ops, "_SCRATCH", {})
    with pytest.raises(
        RuntimeError,
        match=r"compress_c128a needs a 7 x 512 fp32 scratch buffer during CUDA graph "
        r"capture; call compressc.runtime.reserve_c128a_scratch\(7, 512, device\)",
    ):
        scratch_buffer(torch.device("cpu"), 7, 512, capturing=True)
    ops.reserve_c128a_scratch(7, 512, "cpu")
    assert scratch_buffer(torch.device("cpu"), 7, 512, capturing=True).shape == (7, 512)
