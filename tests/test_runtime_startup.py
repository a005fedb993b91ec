"""compressc.runtime.preload on CPU: which kernels an op needs, and every error it names."""

from __future__ import annotations

import pytest
import torch

from compressc.runtime import op_kernels, ops, preload


def test_op_kernels():
    assert [s.variant for s in op_kernels("c4a")] == ["c4a_h512_q64_r64_bf16"]
    assert [s.variant for s in op_kernels("c128a", "f32")] == [
        "c128a_compress_h512_q64_r64_f32", "c128a_store_h512_q64_r64_f32"]
    assert [s.variant for s in op_kernels("indexer_fp8", "f32")] == ["indexer_fp8_h128_q128_r64_f32"]


def test_preload_loads_each_variant_once(monkeypatch):
    loaded = []
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: loaded.append((spec.variant, device)))
    got = preload(("c4a", "c128a"), weight_dtypes=("bf16", torch.float32), device=1)
    assert got == ["c4a_h512_q64_r64_bf16", "c4a_h512_q64_r64_f32", "c128a_compress_h512_q64_r64_f32",
                   "c128a_store_h512_q64_r64_bf16", "c128a_store_h512_q64_r64_f32"]
    assert [v for v, _ in loaded] == got and {d for _, d in loaded} == {torch.device("cuda", 1)}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"ops": ("c4a",), "device": "cpu"}, "preload needs a CUDA device, got cpu"),
        ({"ops": ("c64",), "device": "cuda:0"}, "unknown op 'c64': expected one of c4a, c128a, indexer_fp8"),
        ({"ops": ("c4a",), "device": "cuda:0", "weight_dtypes": (torch.float16,)},
         "weight dtype torch.float16: compressc kernels take a bf16 or f32 RMSNorm weight"),
    ],
    ids=["cpu", "op", "dtype"],
)
def test_preload_errors(kwargs, message, monkeypatch):
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: pytest.fail("nothing may load"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preload(**kwargs)
