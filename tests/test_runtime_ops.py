"""The torch-facing ops on CPU tensors: every argument error, and the packed launch values.

The device check and the kernel are replaced where a launch is needed, so the path
from vLLM's argument list to the kernel's ABI values is checked without a GPU.
"""

from __future__ import annotations

import ctypes

import pytest
import torch

from compressc.runtime import c128a_split, ops
from compressc.runtime.ops import compress_c4a, compress_c128a, compress_indexer_fp8
from compressc.specs import SpecError, make_spec
from compressc.specs.abi import abi

T = 5
_CTYPE = {"ptr": ctypes.c_uint64, "i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float}
_KIND = {"c4a": ("c4a", 4, 64), "indexer_fp8": ("indexer_fp8", 4, 64), "c128a": ("c128a_store", 8, 2)}


def make_args(op: str = "c4a", weight_dtype: torch.dtype = torch.bfloat16, rows: int = T) -> dict:
    """Valid CPU arguments of `op` (keyword names of the op's signature)."""
    kernel, bs, B = _KIND[op]
    spec = make_spec(kernel)
    sw = spec.state_width if op != "c128a" else make_spec("c128a_compress", weight_dtype="f32").state_width
    stride = -(-B * (spec.store.token_stride + spec.store.scale_dim) // 16) * 16
    return {
        "state_cache": torch.randn(6, bs, 2 * sw),
        "token_to_req_indices": torch.zeros(rows, dtype=torch.int32),
        "positions": torch.arange(rows, dtype=torch.int64),
        "slot_mapping": torch.arange(rows, dtype=torch.int64),
        "block_table": torch.arange(6, dtype=torch.int32).reshape(1, 6),
        "block_size": bs,
        "rms_norm_weight": torch.ones(spec.head, dtype=weight_dtype),
        "rms_norm_eps": 1e-6,
        "cos_sin_cache": torch.randn(64, spec.rope),
        "k_cache": torch.zeros(3, stride, dtype=torch.uint8),
        "kv_slot_mapping": torch.arange(rows, dtype=torch.int64),
        "kv_cache_block_size": B,
    }


OPS = {"c4a": compress_c4a, "indexer_fp8": compress_indexer_fp8, "c128a": compress_c128a}


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """Same shape and dtype, starting 4 bytes past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 16, dtype=t.dtype)
    shift = 4 // t.element_size()
    return flat[shift : shift + t.numel()].view(t.shape)


def _strided_state(pages: int, bs: int, width: int, page_stride: int) -> torch.Tensor:
    return torch.empty(pages * page_stride).as_strided((pages, bs, width), (page_stride, width, 1))


# (argument, replacement builder, exception, message); each breaks exactly one rule.
CASES = [
    ("state_cache", lambda a: [1.0], TypeError, "state_cache must be a torch.Tensor, got list"),
    (
        "state_cache",
        lambda a: a["state_cache"].half(),
        TypeError,
        "state_cache must have dtype torch.float32, got torch.float16",
    ),
    (
        "state_cache",
        lambda a: a["state_cache"][..., :100],
        ValueError,
        r"state_cache must have shape \[num_pages, block_size, 2048\] "
        r"\(2 \* state width of c4a_h512_q64_r64_bf16\), got \(6, 4, 100\)",
    ),
    (
        "state_cache",
        lambda a: torch.randn(6, 4, 4096)[..., :2048],
        ValueError,
        r"state_cache must be contiguous in its last two dims \(strides \(\*, 2048, 1\)\), "
        r"got strides \(16384, 4096, 1\)",
    ),
    (
        "state_cache",
        lambda a: _strided_state(6, 4, 2048, 4 * 2048 + 2),
        ValueError,
        r"state_cache must have a page stride that is a multiple of 4 elements \(16 bytes\), "
        r"got stride\(0\) = 8194",
    ),
    (
        "state_cache",
        lambda a: _misaligned(a["state_cache"]),
        ValueError,
        "state_cache must start at a 16-byte aligned address, got 0x",
    ),
    ("block_size", lambda a: 3, ValueError, "block_size must be a power of two, got 3"),
    ("block_size", lambda a: 8, ValueError, r"block_size must equal state_cache.shape\[1\] = 4, got 8"),
    ("block_size", lambda a: 4.0, TypeError, "block_size must be an int, got float"),
    (
        "block_size",
        lambda a: torch.tensor(4.0),
        ValueError,
        "block_size must be an int or a one-element integer CPU tensor, got torch.float32 tensor on cpu",
    ),
    (
        "token_to_req_indices",
        lambda a: a["token_to_req_indices"].long(),
        TypeError,
        "token_to_req_indices must have dtype torch.int32, got torch.int64",
    ),
    (
        "token_to_req_indices",
        lambda a: a["token_to_req_indices"][:4],
        ValueError,
        r"token_to_req_indices must have at least T = slot_mapping.numel\(\) = 5 entries, got 4",
    ),
    (
        "positions",
        lambda a: a["positions"].int(),
        TypeError,
        "positions must have dtype torch.int64, got torch.int32",
    ),
    (
        "positions",
        lambda a: a["positions"][:, None],
        ValueError,
        r"positions must be 1-D, got shape \(5, 1\)",
    ),
    (
        "positions",
        lambda a: torch.arange(2 * T)[::2],
        ValueError,
        r"positions must be contiguous \(stride 1\), got stride 2",
    ),
    (
        "slot_mapping",
        lambda a: a["slot_mapping"].int(),
        TypeError,
        "slot_mapping must have dtype torch.int64, got torch.int32",
    ),
    (
        "kv_slot_mapping",
        lambda a: a["kv_slot_mapping"].float(),
        TypeError,
        "kv_slot_mapping must have dtype torch.int64, got torch.float32",
    ),
    (
        "block_table",
        lambda a: a["block_table"].long(),
        TypeError,
        "block_table must have dtype torch.int32, got torch.int64",
    ),
    (
        "block_table",
        lambda a: a["block_table"][0],
        ValueError,
        r"block_table must be 2-D \[num_reqs, max_pages\], got shape \(6,\)",
    ),
    (
        "block_table",
        lambda a: torch.zeros(6, 2, dtype=torch.int32).t(),
        ValueError,
        r"block_table must have contiguous rows \(stride\(1\) == 1\), got strides \(1, 2\)",
    ),
    (
        "rms_norm_weight",
        lambda a: a["rms_norm_weight"].half(),
        TypeError,
        "rms_norm_weight must have dtype torch.bfloat16 or torch.float32, got torch.float16",
    ),
    (
        "rms_norm_weight",
        lambda a: a["rms_norm_weight"][:256],
        ValueError,
        r"rms_norm_weight must be a contiguous \[head_size\] = \[512\] vector, got shape \(256,\)",
    ),
    (
        "rms_norm_weight",
        lambda a: torch.ones(1024, dtype=torch.bfloat16)[::2],
        ValueError,
        r"rms_norm_weight must be a contiguous \[head_size\] = \[512\] vector, "
        r"got shape \(512,\), strides \(2,\)",
    ),
    (
        "rms_norm_weight",
        lambda a: _misaligned(a["rms_norm_weight"].float()),
        ValueError,
        "rms_norm_weight must start at a 16-byte aligned address",
    ),
    ("rms_norm_eps", lambda a: "1e-6", TypeError, "rms_norm_eps must be a float, got str"),
    (
        "cos_sin_cache",
        lambda a: a["cos_sin_cache"].double(),
        TypeError,
        "cos_sin_cache must have dtype torch.float32, got torch.float64",
    ),
    (
        "cos_sin_cache",
        lambda a: a["cos_sin_cache"][:, :32],
        ValueError,
        r"cos_sin_cache must have shape \[max_position, rope\] with rope = 64, got shape \(64, 32\)",
    ),
    (
        "cos_sin_cache",
        lambda a: torch.randn(64, 64).t(),
        ValueError,
        r"cos_sin_cache must be contiguous, got strides \(1, 64\)",
    ),
    (
        "cos_sin_cache",
        lambda a: _misaligned(a["cos_sin_cache"]),
        ValueError,
        "cos_sin_cache must start at a 16-byte aligned address",
    ),
    (
        "k_cache",
        lambda a: a["k_cache"].to(torch.int8),
        TypeError,
        "k_cache must have dtype torch.uint8, got torch.int8",
    ),
    (
        "k_cache",
        lambda a: a["k_cache"].flatten(),
        ValueError,
        r"k_cache must have a page dimension first \(\[num_pages, ...\]\), got shape \(112128,\)",
    ),
    (
        "k_cache",
        lambda a: torch.zeros(3, 37448, dtype=torch.uint8)[:, :-4],
        ValueError,
        r"k_cache must have a page stride \(stride\(0\), bytes\) that is a multiple of 16, got 37448",
    ),
    (
        "k_cache",
        lambda a: torch.zeros(3, 37360, dtype=torch.uint8),
        ValueError,
        r"k_cache must have a page stride \(stride\(0\), bytes\) of at least "
        r"kv_cache_block_size \* \(576 \+ 8\) = 37376, got 37360",
    ),
    (
        "k_cache",
        lambda a: _misaligned(a["k_cache"][:2]),
        ValueError,
        "k_cache must start at a 16-byte aligned address",
    ),
    ("kv_cache_block_size", lambda a: 48, ValueError, "kv_cache_block_size must be a power of two, got 48"),
    (
        "kv_cache_block_size",
        lambda a: 128,
        ValueError,
        r"of at least kv_cache_block_size \* \(576 \+ 8\) = 74752",
    ),
]


@pytest.mark.parametrize("name,make,exc,message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_c4a_argument_errors(name, make, exc, message):
    args = make_args("c4a")
    args[name] = make(args)
    with pytest.raises(exc, match=message):
        compress_c4a(**args)


@pytest.mark.parametrize("op", OPS)
def test_cpu_tensors_are_rejected_after_all_other_checks(op):
    with pytest.raises(ValueError, match="state_cache must be on a CUDA device, got cpu"):
        OPS[op](**make_args(op))


def test_mixed_devices_name_the_argument():
    args = make_args("c4a")
    args["positions"] = args["positions"].to("meta")
    with pytest.raises(
        ValueError, match=r"positions must be on the same device as state_cache \(cpu\), got meta"
    ):
        compress_c4a(**args)


def test_bad_variant_names_the_field():
    with pytest.raises(SpecError, match="invalid head_size=500: must be a multiple of 8"):
        compress_c4a(**make_args("c4a"), head_size=500)


def test_indexer_k_cache_layout():
    args = make_args("indexer_fp8")
    args["k_cache"] = torch.zeros(3, 8432, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"kv_cache_block_size \* \(128 \+ 4\) = 8448, got 8432"):
        compress_indexer_fp8(**args)
    args = make_args("indexer_fp8")
    args["state_cache"] = torch.randn(6, 4, 2048)
    with pytest.raises(ValueError, match=r"state_cache must have shape \[num_pages, block_size, 512\]"):
        compress_indexer_fp8(**args)


@pytest.mark.parametrize(
    "given,message",
    [
        (torch.zeros(T, 512, dtype=torch.float64), TypeError),
        (
            torch.zeros(T - 1, 512),
            r"compressed_kv must have shape \[>= T, head_size\] = \[>= 5, 512\], got shape \(4, 512\)",
        ),
        (torch.zeros(512, T).t(), r"compressed_kv must be contiguous, got strides \(1, 5\)"),
        (_misaligned(torch.zeros(T, 512)), "compressed_kv must start at a 16-byte aligned address"),
    ],
)
def test_c128a_compressed_kv_errors(given, message):
    exc = message if isinstance(message, type) else ValueError
    match = "compressed_kv must have dtype torch.float32, got torch.float64" if exc is TypeError else message
    with pytest.raises(exc, match=match):
        compress_c128a(**make_args("c128a"), compressed_kv=given)


def test_c128a_state_is_the_compress_kernels():
    args = make_args("c128a")
    args["state_cache"] = torch.randn(6, 8, 2048)
    with pytest.raises(
        ValueError, match=r"\[num_pages, block_size, 1024\] \(2 \* state width of c128a_(compress|split)_h512"
    ):
        compress_c128a(**args)


# -- launches with a fake device and kernel ---------------------------------------------
class FakeKernel:
    overlaps: list = []  # overlap_previous of every launch_rows call, reset by the fixture

    def __init__(self, spec, log):
        self.spec, self.log = spec, log

    def launch_rows(self, num_rows, kernel_params, overlap_previous=False):
        """What LoadedKernel.launch_rows receives: the launched rows (the grid is its business)."""
        self.overlaps.append(overlap_previous)
        params = abi(self.spec)
        values = {
            p.name: ctypes.cast(kernel_params[i], ctypes.POINTER(_CTYPE[p.kind])).contents.value
            for i, p in enumerate(params)
        }
        self.log.append((self.spec.variant, num_rows, values))


@pytest.fixture
def launches(monkeypatch):
    log: list = []
    monkeypatch.setattr(FakeKernel, "overlaps", [])
    monkeypatch.setattr(ops, "check_device", lambda tensors: torch.device("cuda", 0))
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: FakeKernel(spec, log))
    ops.set_debug_checks(None)  # forget prepared launches of earlier tests' (stand-in) kernels
    return log


@pytest.mark.parametrize("weight", [torch.bfloat16, torch.float32])
def test_c4a_launch_values(launches, weight):
    args = make_args("c4a", weight)
    args["positions"] = args["positions"][:3]
    compress_c4a(**args)
    suffix = "bf16" if weight == torch.bfloat16 else "f32"
    ((variant, grid, v),) = launches
    assert variant == f"c4a_h512_q64_r64_{suffix}" and grid == T
    assert v["state_cache"] == args["state_cache"].data_ptr() and v["k_cache"] == args["k_cache"].data_ptr()
    assert v["rms_norm_weight"] == args["rms_norm_weight"].data_ptr()
    assert (v["num_rows"], v["num_positions"], v["num_kv_slots"]) == (T, 3, T)
    assert (v["block_table_stride"], v["state_page_stride"], v["state_block_shift"]) == (6, 4 * 2048, 2)
    assert (v["k_cache_page_stride"], v["kv_block_shift"]) == (37376, 6)
    assert v["rms_norm_eps"] == pytest.approx(1e-6)


def test_indexer_launch_values(launches):
    compress_indexer_fp8(**make_args("indexer_fp8", torch.float32))
    ((variant, grid, v),) = launches
    assert variant == "indexer_fp8_h128_q128_r64_f32" and grid == T
    assert v["k_cache_page_stride"] == 64 * 132 and v["state_page_stride"] == 4 * 512


def test_c128a_launches_compress_then_store(launches):
    args = make_args("c128a")
    kv = torch.zeros(T + 3, 512)
    compress_c128a(**args, compressed_kv=kv)
    (pool, pv), (store, sv) = [(name, v) for name, _, v in launches]
    # only the store, launched right after its compress kernel, may overlap it
    assert FakeKernel.overlaps == [False, True]
    assert pool == "c128a_compress_h512_q64_r64_f32" and store == "c128a_store_h512_q64_r64_bf16"
    assert pv["compressed_kv"] == sv["compressed_kv"] == kv.data_ptr()
    assert pv["state_block_shift"] == 3 and sv["kv_block_shift"] == 1 and sv["k_cache_page_stride"] == 1168


def test_c128a_uses_the_scratch_buffer(launches, monkeypatch):
    seen = []

    def fake_scratch(device, rows, head_size):
        seen.append((device, rows, head_size))
        return torch.zeros(rows, head_size)

    monkeypatch.setattr(ops, "scratch_buffer", fake_scratch)
    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 0)  # the pair at every T
    compress_c128a(**make_args("c128a"))
    assert seen == [(torch.device("cuda", 0), T, 512)] and len(launches) == 2


@pytest.mark.parametrize("op", OPS)
def test_zero_rows_launch_nothing(launches, op):
    OPS[op](**make_args(op, rows=0))
    assert launches == []
