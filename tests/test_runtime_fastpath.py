"""The eager path on CPU: one full check per signature, the guard, the prepared buffer, the launch.

The device check and the kernel are stand-ins (as tests/test_runtime_ops.py); what the
"kernel" receives is read back from the prepared kernel_params array.
"""

from __future__ import annotations

import ctypes
import time
from types import SimpleNamespace

import pytest
import torch
from test_runtime_ops import FakeKernel, make_args

from compressc.config import ConfigError
from compressc.runtime import c128a_split, cudalaunch, fastpath, ops
from compressc.specs.launch import GridRule


@pytest.fixture
def fast(monkeypatch):
    """Stand-in device and kernel, the signature cache on and empty; `checks` counts full checks."""
    log: list = []
    checks: list[str] = []
    monkeypatch.setattr(FakeKernel, "overlaps", [])
    monkeypatch.setattr(ops, "check_device", lambda tensors: torch.device("cuda", 0))
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: FakeKernel(spec, log))
    real = ops._checked_fused
    monkeypatch.setattr(ops, "_checked_fused", lambda *a: checks.append("check") or real(*a))
    ops.set_debug_checks(False)
    yield SimpleNamespace(log=log, checks=checks)
    ops.set_debug_checks(None)


def _step(args: dict, rows: int) -> dict:
    """New per-step tensors of `rows` rows (new objects, as vLLM's slices are)."""
    return args | {"token_to_req_indices": torch.zeros(rows + 2, dtype=torch.int32)[:rows],
                   "positions": torch.arange(rows), "slot_mapping": torch.arange(rows),
                   "kv_slot_mapping": torch.arange(rows), "block_table": args["block_table"].clone()}


def test_a_signature_is_checked_once(fast):
    args = make_args("c4a")
    ops.compress_c4a(**args)
    for rows in (3, 9, 1):
        step = _step(args, rows)
        ops.compress_c4a(**step)
        (_, launched, values) = fast.log[-1]
        assert launched == rows and values["num_rows"] == rows and values["num_kv_slots"] == rows
        assert values["positions"] == step["positions"].data_ptr()
        assert values["block_table"] == step["block_table"].data_ptr()
        assert values["k_cache"] == args["k_cache"].data_ptr() and values["kv_block_shift"] == 6
    assert fast.checks == ["check"] and len(fast.log) == 4 and len(ops._SIGNATURES["c4a"]) == 1


@pytest.mark.parametrize(
    "change,error",
    [
        ({"positions": torch.arange(5, dtype=torch.int32)}, "positions must have dtype torch.int64"),
        ({"slot_mapping": torch.arange(10)[::2]},
         r"slot_mapping must be contiguous \(stride 1\), got stride 2"),
        ({"token_to_req_indices": torch.zeros(2, dtype=torch.int32)},
         r"token_to_req_indices must have at least T = slot_mapping.numel\(\) = 5 entries, got 2"),
        ({"block_table": torch.zeros(6, 2, dtype=torch.int32).t()},
         r"block_table must have contiguous rows \(stride\(1\) == 1\), got strides \(1, 2\)"),
    ],
    ids=["dtype", "stride", "length", "table"],
)
def test_a_changed_signature_is_checked_in_full(fast, change, error):
    args = make_args("c4a")
    ops.compress_c4a(**args)
    with pytest.raises((TypeError, ValueError), match=error):
        ops.compress_c4a(**(args | change))


def test_a_new_layer_tensor_is_a_new_signature(fast):
    args = make_args("c4a")
    ops.compress_c4a(**args)
    other = args | {"k_cache": args["k_cache"].clone()}
    ops.compress_c4a(**other)
    assert fast.checks == ["check", "check"] and fast.log[-1][2]["k_cache"] == other["k_cache"].data_ptr()
    assert len(ops._SIGNATURES["c4a"]) == 2


def test_length_free_checks_only_are_cached(fast):
    args = make_args("c4a")
    ops.compress_c4a(**(args | {"block_size": torch.tensor(4)}))  # a tensor could change in place
    ops.compress_c4a(**(args | {"block_size": torch.tensor(4)}))
    one = torch.arange(10)[::3][:1]  # one element: any stride passes, but not for a longer slice
    ops.compress_c4a(**(make_args("c4a", rows=1) | {"positions": one}))
    ops.compress_c4a(**(make_args("c4a", rows=1) | {"positions": one}))
    assert len(fast.checks) == 4 and len(ops._SIGNATURES["c4a"]) == 0


def test_debug_checks_check_every_call(fast, monkeypatch):
    args = make_args("c4a")
    ops.set_debug_checks(True)
    ops.compress_c4a(**args)
    ops.compress_c4a(**args)
    assert fast.checks == ["check", "check"] and len(ops._SIGNATURES["c4a"]) == 0
    ops.set_debug_checks(None)
    monkeypatch.setenv("COMPRESSC_DEBUG_CHECKS", "1")
    assert ops.debug_checks() is True
    ops.set_debug_checks(None)
    monkeypatch.setenv("COMPRESSC_DEBUG_CHECKS", "sometimes")
    with pytest.raises(ConfigError, match="COMPRESSC_DEBUG_CHECKS='sometimes' is not a boolean"):
        ops.debug_checks()


def test_c128a_signature_and_scratch(fast, monkeypatch):
    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 0)  # the pair (small T takes c128a_split)
    scratch = torch.zeros(64, 512)
    monkeypatch.setattr(ops, "_SCRATCH", {torch.device("cuda", 0): [scratch.view(-1)]})
    grown = []
    monkeypatch.setattr(ops, "scratch_buffer", lambda d, rows, head: grown.append(rows) or scratch[:rows])
    args = make_args("c128a")
    ops.compress_c128a(**args)
    ops.compress_c128a(**_step(args, 7))
    assert grown == [5]  # the full check asks for the buffer; the cached call finds it big enough
    pool, store = fast.log[-2:]
    assert (pool[0], store[0]) == ("c128a_compress_h512_q64_r64_f32", "c128a_store_h512_q64_r64_bf16")
    assert pool[2]["compressed_kv"] == store[2]["compressed_kv"] == scratch.data_ptr()
    assert store[2]["num_rows"] == 7 and FakeKernel.overlaps[-2:] == [False, True]
    assert len(ops._SIGNATURES["c128a"]) == 1


def test_python_cost_of_a_cached_call(fast, monkeypatch):
    """With the launch a no-op, a cached call costs well under the full checks (both measured)."""
    idle = SimpleNamespace(launch_rows=lambda *a, **k: None)
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: idle)
    args = make_args("c4a")
    values = list(args.values())

    def per_call(n: int = 2000) -> float:
        start = time.perf_counter()
        for _ in range(n):
            ops.compress_c4a(*values)
        return (time.perf_counter() - start) / n

    per_call(50)
    cached, checked = [], []
    for _ in range(5):  # alternate, and keep each one's best: the machine is shared
        ops.set_debug_checks(False)
        cached.append(per_call(1000))
        ops.set_debug_checks(True)
        checked.append(per_call(300))
    print(f"python side per call: cached {min(cached) * 1e6:.2f} us, checked {min(checked) * 1e6:.2f} us")
    assert min(cached) < 0.75 * min(checked)


# -- the guard ------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["torch", "python"])
def test_guard(native, monkeypatch):
    if not native:
        monkeypatch.setattr(fastpath, "_native_guard", lambda: None)
    layer, rows, table = torch.zeros(6, 4, 8), torch.arange(5), torch.zeros(3, 4, dtype=torch.int32)
    guard = fastpath.make_guard((layer, rows, table), free=2)
    assert guard(layer, torch.arange(9), torch.zeros(7, 4, dtype=torch.int32))
    assert not guard(torch.zeros(6, 4, 9), rows, table)  # a layer tensor's shape is fixed
    assert not guard(layer, rows.int(), table)
    assert not guard(layer, torch.arange(10)[::2], table)
    assert not guard(layer, rows, torch.zeros(4, 3, dtype=torch.int32).t())
    assert not guard(layer, rows.to("meta"), table)
    assert not guard(layer, rows[None], table)
    assert not guard(layer, 5, table)


def test_torchs_guard_is_used_on_the_pinned_torch():
    assert fastpath._native_guard() is not None


# -- the ctypes launch ----------------------------------------------------------------------
def test_launch_structs_match_cuda_h():
    from cuda.bindings import driver

    assert ctypes.sizeof(cudalaunch.LaunchAttribute) == 72 and ctypes.sizeof(cudalaunch.LaunchConfig) == 56
    assert (cudalaunch.LaunchConfig.hStream.offset, cudalaunch.LaunchConfig.attrs.offset,
            cudalaunch.LaunchConfig.numAttrs.offset) == (32, 40, 48)
    assert cudalaunch.LaunchAttribute.value.offset == 8
    ids = driver.CUlaunchAttributeID
    assert cudalaunch.ATTR_CLUSTER_DIMENSION == int(ids.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
    assert cudalaunch.ATTR_PROGRAMMATIC_STREAM_SERIALIZATION == int(
        ids.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)


class FakeLib:
    """libcuda's cuLaunchKernelEx, recording the configuration it reads; results pop from `results`."""

    def __init__(self, results=()) -> None:
        self.calls: list[tuple] = []
        self.results = list(results)

    def cuLaunchKernelEx(self, config_ref, function, params, extra):
        config = config_ref._obj
        attrs = [(config.attrs[i].id, tuple(config.attrs[i].value.dims), config.attrs[i].value.flag)
                 for i in range(config.numAttrs)]
        block = (config.blockDimX, config.blockDimY, config.blockDimZ)
        self.calls.append(("ex", config.gridDimX, config.hStream, function.value, params.value, attrs,
                           block, config.sharedMemBytes, extra))
        return self.results.pop(0) if self.results else 0


def _kernel(**changes) -> SimpleNamespace:
    fields = dict(function=0x1234, block=(128, 1, 1), smem_dynamic=512, grid=GridRule("rows"),
                  sm_count=132, resident=0,
                  max_clusters=0, cluster=1, programmatic=False, device_index=0, entry="k")
    return SimpleNamespace(**(fields | changes))


def test_every_launch_is_one_cuLaunchKernelEx_with_a_prebuilt_configuration():
    lib, V = FakeLib(), ctypes.c_void_p

    def launch(kernel, rows, params, stream, overlap=False) -> int:
        return cudalaunch.FastKernel(kernel, lib, overlap).launcher(V(params))(rows, stream)

    assert launch(_kernel(), 7, 0x1000, 0x55) == 0
    # 8 clusters of 2 CTAs
    launch(_kernel(cluster=2, grid=GridRule.parse("wave:8,cluster:2")), 8, 0x2000, 0x66)
    launch(_kernel(programmatic=True), 3, 0x3000, 0x77, overlap=True)
    launch(_kernel(programmatic=True), 3, 0x3000, 0x77)  # not overlapping: no attribute
    assert launch(_kernel(), 0, 0x1000, 0x55) == 0  # no rows: no call
    assert lib.calls[0] == ("ex", 7, 0x55, 0x1234, 0x1000, [], (128, 1, 1), 512, None)
    assert lib.calls[1][:4] == ("ex", 16, 0x66, 0x1234) and lib.calls[1][5] == [(4, (2, 1, 1), 2)]
    assert lib.calls[2][:4] == ("ex", 3, 0x77, 0x1234) and lib.calls[2][5][0][0] == 6
    assert lib.calls[3][5] == [] and len(lib.calls) == 4


def test_grid_is_the_manifest_rule_memoised():
    fast = cudalaunch.FastKernel(_kernel(grid=GridRule.parse("wave:2"), sm_count=4), FakeLib())
    assert fast.grid(1000) == 8 and fast.grid(3) == 3 and fast.grid(0) == 0


def test_prepared_launch_retries_once_with_the_context(monkeypatch):
    from compressc.runtime import loader
    from compressc.specs import make_spec
    from compressc.specs.abi import abi

    lib, contexts = FakeLib(results=[201]), []
    monkeypatch.setattr(fastpath, "driver_library", lambda: lib)
    monkeypatch.setattr(fastpath, "_raw_stream", lambda index: 0x99)
    monkeypatch.setattr(loader, "ensure_context", contexts.append)
    spec = make_spec("c4a")
    values = {p.name: 16 if p.kind == "ptr" else (1.0 if p.kind == "f32" else 1) for p in abi(spec)}
    prepared = fastpath.Prepared([(_kernel(), abi(spec), False)], values, 0)
    prepared.run((32, 48, 64, 80, 96, 0, 5, 5, 5), 5)
    assert [launch.via for launch in prepared.launches] == ["libcuda"]
    assert contexts == [0] and len(lib.calls) == 2 and lib.calls[1][1:3] == (5, 0x99)
    params = ctypes.cast(lib.calls[1][4], ctypes.POINTER(ctypes.c_void_p))
    names = [p.name for p in abi(spec)]
    read = {n: ctypes.c_uint64.from_address(params[i]).value for i, n in enumerate(names)
            if n != "rms_norm_eps"}
    assert read["positions"] == 48 and read["kv_slot_mapping"] == 96 and read["state_cache"] == 16
    assert read["num_rows"] & 0xFFFFFFFF == 5


def test_a_launch_that_fails_again_names_the_kernel_and_the_error(monkeypatch):
    from compressc.runtime import loader
    from compressc.specs import make_spec
    from compressc.specs.abi import abi

    lib = FakeLib(results=[201, 201])
    monkeypatch.setattr(fastpath, "driver_library", lambda: lib)
    monkeypatch.setattr(fastpath, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(loader, "ensure_context", lambda index: None)
    monkeypatch.setattr(loader.cudriver, "error_name", lambda result: "CUDA_ERROR_INVALID_CONTEXT")
    spec = make_spec("c4a")
    values = {p.name: 16 if p.kind == "ptr" else (1.0 if p.kind == "f32" else 1) for p in abi(spec)}
    prepared = fastpath.Prepared([(_kernel(entry="c4a_entry"), abi(spec), False)], values, 0)
    message = r"^cuLaunchKernelEx\(c4a_entry\) failed: CUDA_ERROR_INVALID_CONTEXT \(201\)$"
    with pytest.raises(loader.CudaError, match=message):
        prepared.run((32, 48, 64, 80, 96, 0, 5, 5, 5), 5)


def test_a_cached_launch_patches_only_the_step_values(monkeypatch):
    """run() writes the per-step struct and the configuration's grid and stream; the packed
    layer values, the kernel_params array and the call's arguments stay as prepared."""
    from compressc.specs import make_spec
    from compressc.specs.abi import abi

    lib = FakeLib()
    monkeypatch.setattr(fastpath, "driver_library", lambda: lib)
    streams = iter([0x71, 0x72])
    monkeypatch.setattr(fastpath, "_raw_stream", lambda index: next(streams))
    spec = make_spec("c4a")
    values = {p.name: 16 * (i + 1) if p.kind == "ptr" else (1.0 if p.kind == "f32" else i)
              for i, p in enumerate(abi(spec))}
    prepared = fastpath.Prepared([(_kernel(), abi(spec), False)], values, 0)
    fixed = prepared.buffer.raw[fastpath.STEP.size:]
    (launch,) = prepared.launches
    array = list(launch.array)
    for step, rows in (((32, 48, 64, 80, 96, 0, 5, 5, 5), 5), ((112, 128, 144, 160, 176, 0, 9, 9, 9), 9)):
        prepared.run(step, rows)
        assert prepared.buffer.raw[:fastpath.STEP.size] == fastpath.STEP.pack(*step)
        assert prepared.buffer.raw[fastpath.STEP.size:] == fixed and list(launch.array) == array
    assert [c[1:3] for c in lib.calls] == [(5, 0x71), (9, 0x72)]
    assert {c[4] for c in lib.calls} == {ctypes.addressof(launch.array)}
