"""COMPRESSC_CHECK_BOUNDS=kernel: the checked builds (cc.bounds) on the CPU (issue 17, item 5).

The interpreter runs a checked build as the emitted kernel does: an out-of-range request index,
block_table column or page, rope position or kv slot makes the row inactive and is recorded;
the rows it refuses are exactly the host mode's (compressc.runtime.bounds), the bytes it writes
are the unchecked kernel's on the same call with those rows made inactive (so nothing out of
range is written), and an in-range call gives the unchecked kernel's bytes and no record.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compressc.config import Config, ConfigError
from compressc.driver.compile import compile_source
from compressc.driver.cubin import check_cubin
from compressc.ir.core import Op
from compressc.ir.from_spec import module_from_spec
from compressc.ir.interp import args_from_scenario, run_module
from compressc.ir.launch import launch_info
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.packs.wanted import spec_of
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline
from compressc.runtime import bounds_kernel, ops
from compressc.runtime.bounds import IndexOutOfBoundsError, _Rows
from compressc.scenarios import make_scenario
from compressc.specs import make_spec
from compressc.specs.abi import abi
from compressc.specs.errors import SpecError

POOL_ONLY = "c128a_compress"


def _lower(spec, pipeline: str = "default"):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module, "sm_90a"))).run(module)


def _run(spec, sc, pipeline: str = "default") -> tuple[torch.Tensor, list[int]]:
    """(output, error record) of one interpreted launch of `spec` (checked or not) on `sc`."""
    sc = replace(sc, spec=spec)
    out = sc.poisoned_compressed_kv() if spec.kernel == POOL_ONLY else sc.poisoned_cache()
    args = args_from_scenario(sc, out)
    run_module(_lower(spec, pipeline), args, sm_count=3)
    record = args.get("bounds_error")
    return out, [] if record is None else [int(w) for w in record]


def _host_bad_rows(spec, sc) -> torch.Tensor:
    """The rows the host mode refuses (any check), on the same call."""
    args = {name: getattr(sc, name) for name in ("positions", "token_to_req_indices", "kv_slot_mapping",
                                                  "slot_mapping", "block_table", "block_size", "state_cache",
                                                  "cos_sin_cache", "k_cache", "kv_cache_block_size")}
    rows = _Rows(spec, args, sc.T)
    checks = []
    if spec.pools:  # the kernel reads the paged state: the request and window checks
        checks = rows.checks()[:3]
    if spec.normalises:  # the kernel stores: the rope and kv checks
        checks += [rows._rope_check(), rows._kv_check()]
    bad = torch.zeros(sc.T, dtype=torch.bool)
    for mask, _ in checks:
        bad |= mask.reshape(sc.T, -1).any(dim=1)
    return bad


def _active_row(sc) -> int:
    ratio = sc.spec.ratio
    ok = (sc.slot_mapping >= 0) & (sc.token_to_req_indices >= 0) & (sc.kv_slot_mapping >= 0)
    ok &= (sc.positions >= 0) & ((sc.positions + 1) % ratio == 0)
    return int(ok.nonzero()[len(ok.nonzero()) // 2, 0])


SPECS = [make_spec("c4a"), make_spec("indexer_fp8"), make_spec("indexer_mxfp4"), make_spec("c128a_store"),
         make_spec(POOL_ONLY, weight_dtype="f32")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.variant)
@pytest.mark.parametrize("pipeline", ["default", "baseline"])
def test_an_in_range_launch_gives_the_unchecked_bytes_and_no_record(spec, pipeline) -> None:
    sc = make_scenario(spec, "mixed", 70, seed=3)
    plain, _ = _run(spec, sc, pipeline)
    checked, record = _run(spec.with_(bounds=True), sc, pipeline)
    assert torch.equal(checked.view(torch.uint8), plain.view(torch.uint8))
    assert record == [0] * 8


def _corrupt(sc, what: str, row: int):
    if what == "request":
        req = sc.token_to_req_indices.clone()
        req[row] = sc.block_table.shape[0]
        return replace(sc, token_to_req_indices=req), "request"
    if what == "page":
        table = sc.block_table.clone()
        req, shift = int(sc.token_to_req_indices[row]), sc.block_size.bit_length() - 1
        table[req, int(sc.positions[row]) >> shift] = sc.state_cache.shape[0]
        return replace(sc, block_table=table), "page"
    if what == "negative page":
        table = sc.block_table.clone()
        table[int(sc.token_to_req_indices[row]), int(sc.positions[row]) // sc.block_size] = -1
        return replace(sc, block_table=table), "page"
    if what == "column":
        need = int(sc.positions[row]) // sc.block_size
        return replace(sc, block_table=sc.block_table[:, :need]), "column"
    if what == "rope":
        need = int(sc.positions[row]) // sc.spec.ratio * sc.spec.ratio
        return replace(sc, cos_sin_cache=sc.cos_sin_cache[:need]), "rope"
    slots = sc.kv_slot_mapping.clone()
    slots[row] = sc.k_cache.shape[0] * sc.kv_cache_block_size + 3
    return replace(sc, kv_slot_mapping=slots), "kv"


CASES = [("c4a", w) for w in ("request", "page", "negative page", "column", "rope", "kv")]
CASES += [("indexer_mxfp4", "page"), ("indexer_fp8", "kv"), ("c128a_store", "rope"), ("c128a_store", "kv"),
          (POOL_ONLY, "request"), (POOL_ONLY, "page"), (POOL_ONLY, "column")]


@pytest.mark.parametrize(("kernel", "what"), CASES)
@pytest.mark.parametrize("pipeline", ["default", "baseline"])
def test_an_out_of_range_index_is_skipped_and_recorded(kernel: str, what: str, pipeline: str) -> None:
    spec = make_spec(kernel, weight_dtype="f32") if kernel == POOL_ONLY else make_spec(kernel)
    base = make_scenario(spec, "mixed", 70, seed=11)
    sc, check = _corrupt(base, what, _active_row(base))
    bad = _host_bad_rows(spec, sc)
    assert bad.any()
    got, record = _run(spec.with_(bounds=True), sc, pipeline)
    # the unchecked kernel on the same call, the refused rows made inactive: nothing else changes
    want, _ = _run(spec, replace(sc, slot_mapping=torch.where(bad, -1, sc.slot_mapping)), pipeline)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert record[0] == 1 | (bounds_kernel.BOUNDS_CODES[check] << 32)
    assert bool(bad[record[1]]), "the recorded row is one the host mode refuses"
    message = bounds_kernel.describe(record)
    assert message is not None and message.endswith("(COMPRESSC_CHECK_BOUNDS=kernel)")
    assert f"[{record[1]}]" in message or f"row {record[1]}" in message


def test_record_messages_name_the_tensor_the_row_and_the_value() -> None:
    codes = bounds_kernel.BOUNDS_CODES
    cases = {
        "request": "token_to_req_indices[5] = 9 is out of range: block_table has 2 row(s)",
        "column": "positions[5] = 9 needs block_table column 4, block_table has 2 column(s)",
        "page": "block_table[7, 4] = 9 (used by row 5) is not a page of state_cache, which has 2 page(s)",
        "rope": "positions[5] = 9 needs cos_sin_cache row 4, cos_sin_cache has 2 row(s)",
        "kv": "kv_slot_mapping[5] = 9 is past k_cache: page 4, k_cache has 2 page(s)",
    }
    for check, text in cases.items():
        words = [1 | codes[check] << 32, 5, 9, 4, 2, 7, 0, 0]
        want = f"{text}; the kernel skipped the row (COMPRESSC_CHECK_BOUNDS=kernel)"
        assert bounds_kernel.describe(words) == want
    assert bounds_kernel.describe([0] * 8) is None


def test_the_record_is_raised_and_cleared_on_demand() -> None:
    device = torch.device("cpu")
    record = bounds_kernel.record_for(device)
    record[:6] = torch.tensor([1 | 5 << 32, 3, 200, 3, 3, 0])
    with pytest.raises(IndexOutOfBoundsError, match=r"^kv_slot_mapping\[3\] = 200 is past k_cache"):
        bounds_kernel.check_kernel_bounds(device)
    assert record.tolist() == [0] * 8
    bounds_kernel.check_kernel_bounds(device)  # nothing recorded: nothing raised


# -- the IR, the verifier, the emitter, the cubin ---------------------------------------------
def test_the_checked_build_is_its_own_variant_with_its_own_abi() -> None:
    spec, checked = make_spec("c4a"), make_spec("c4a", bounds=True)
    assert checked.variant == spec.variant + "_bounds"
    assert spec_of({"variant": checked.variant, "kernel": "c4a"}) == checked
    names = [p.name for p in abi(checked)]
    assert names[:len(abi(spec))] == [p.name for p in abi(spec)]
    assert names[len(abi(spec)):] == ["bounds_error", "bounds_table_rows", "bounds_table_cols",
                                      "bounds_state_pages", "bounds_cos_sin_rows", "bounds_kv_pages"]
    store = [p.name for p in abi(make_spec("c128a_store", bounds=True))]
    assert store[-3:] == ["bounds_error", "bounds_cos_sin_rows", "bounds_kv_pages"]
    module = _lower(checked)
    assert module.find("cc.bounds").attr("checks") == "request,column,page,rope,kv"
    # the tuned schedule of the unchecked variant (the same rows, the same bytes)
    assert resolve_pipeline("default", module_from_spec(checked), "sm_90a") == resolve_pipeline(
        "default", module_from_spec(spec), "sm_90a")


def test_the_verifier_keeps_cc_bounds_and_the_bounds_attribute_together() -> None:
    checked = module_from_spec(make_spec("c4a", bounds=True))
    plain = module_from_spec(make_spec("c4a"))
    op = checked.find("cc.bounds")
    at = next(i for i, o in enumerate(plain.ops) if o.name == "cc.row_guard") + 1
    extra = Op("cc.bounds", "", ("active",), op.attrs)
    with pytest.raises(VerifyError, match=r"cc.bounds=1: needs the module attribute bounds = true"):
        verify(replace(plain, ops=plain.ops[:at] + (extra,) + plain.ops[at:]))
    without = replace(checked, ops=tuple(o for o in checked.ops if o.name != "cc.bounds"))
    with pytest.raises(VerifyError, match=r"cc.bounds=0: a checked build \(bounds = true\) needs one"):
        verify(without)
    wrong = replace(checked, ops=tuple(replace(o, attrs=(("checks", "kv"), *o.attrs[1:]))
                                       if o.name == "cc.bounds" else o for o in checked.ops))
    with pytest.raises(VerifyError, match="checks='kv': contradicts the module attributes"):
        verify(wrong)


def test_only_the_paged_kernels_have_a_checked_build() -> None:
    with pytest.raises(SpecError, match="bounds"):
        make_spec("c128a_online", bounds=True)
    with pytest.raises(SpecError, match="bounds"):
        make_spec(POOL_ONLY, weight_dtype="f32", state_layout="ring", bounds=True)


def test_emitted_source_checks_before_use_and_records() -> None:
    source = emit(_lower(make_spec("c4a", bounds=True)), "default")
    for line in ("if req >= bounds_table_rows:", "if c_hi >= bounds_table_cols:",
                 "if (page < 0) | (page >= bounds_state_pages):", "if need >= bounds_cos_sin_rows:",
                 "if kv_page >= bounds_kv_pages:", "active = cutlass.Boolean(False)",
                 "ops.record_bounds_error(bounds_error.toint(), bad, Int64(row), bad_value, bad_at, "):
        assert line in source, line
    assert "bounds" not in emit(_lower(make_spec("c4a")), "default")


@pytest.mark.parametrize("kernel", ["c4a", "c128a_store"])
def test_a_checked_build_compiles_to_a_cubin_with_its_abi(kernel: str) -> None:
    module = _lower(make_spec(kernel, bounds=True))
    launch = launch_info(module)
    artifacts = compile_source(emit(module, "default"), "sm_90a")
    check_cubin(artifacts.cubin, launch.entry, launch.params, launch.block, arch="sm_90a")
    assert artifacts.report.spill_stores == 0


# -- the runtime ---------------------------------------------------------------------------------
def test_config_reads_the_kernel_mode() -> None:
    config = Config.from_env({"COMPRESSC_CHECK_BOUNDS": "kernel", "HOME": "/tmp"})
    assert config.check_bounds and config.bounds_in_kernel
    host = Config.from_env({"COMPRESSC_CHECK_BOUNDS": "1", "HOME": "/tmp"})
    assert host.check_bounds and not host.bounds_in_kernel
    with pytest.raises(ConfigError, match=r"COMPRESSC_CHECK_BOUNDS='gpu' is not a boolean: .* \(or kernel\)"):
        Config.from_env({"COMPRESSC_CHECK_BOUNDS": "gpu", "HOME": "/tmp"})


def test_the_kernel_mode_serves_the_checked_builds_with_their_values(monkeypatch) -> None:
    """The checked path picks the `_bounds` specs and passes the record and the extents; the host
    value checks are left to the kernel (a bad kv slot reaches the launch)."""
    from test_runtime_ops import make_args

    monkeypatch.setattr(ops, "bounds_in_kernel", lambda: True)
    monkeypatch.setattr(ops, "check_bounds_enabled", lambda: True)
    args = make_args("c4a")
    args["kv_slot_mapping"] = args["kv_slot_mapping"].clone()
    args["kv_slot_mapping"][3] = 10**6
    named = ops._named(*(args[n] for n in ops._ARG_NAMES), fp8_scale=None)
    monkeypatch.setattr(ops, "check_device", lambda tensors: torch.device("cpu"))
    values, device, specs = ops._checked_fused("c4a", 512, 64, ("fp8_ds_mla", False), named)
    assert [s.variant for s in specs] == ["c4a_h512_q64_r64_bf16_bounds"]
    assert values["bounds_error"] == bounds_kernel.record_for(device).data_ptr()
    assert values["bounds_kv_pages"] == args["k_cache"].shape[0]
    assert values["bounds_table_cols"] == args["block_table"].shape[1]
    args = make_args("c128a")
    named = ops._named(*(args[n] for n in ops._ARG_NAMES), compressed_kv=None, fp8_scale=None)
    _, _, (pool, store) = ops._checked_c128a(512, 64, ("fp8_ds_mla", False), named)
    assert pool.bounds and store.bounds


def test_the_checked_build_has_its_own_cache_key() -> None:
    from compressc.packs.wanted import wanted_build

    plain = wanted_build(make_spec("c4a"), "sm_90a")
    checked = wanted_build(make_spec("c4a", bounds=True), "sm_90a")
    assert plain.key != checked.key or plain.key is None
    assert plain.ingredients != checked.ingredients


def test_the_guard_ops_say_the_build_is_checked(monkeypatch) -> None:
    """lower-grid writes the checks on every guard (kd.guard, kd.ballot, kd.sweeps) of a checked
    build; the emitter and the interpreter check the row's indices where it says so."""
    from compressc.ir import interp
    from compressc.ir.verifier import VerifyError, verify

    spec = make_spec("c4a")
    checked = _lower(spec.with_(bounds=True))
    guards = [op for op in checked.ops if op.name in ("kd.guard", "kd.ballot", "kd.sweeps")]
    assert guards and all(op.attr("checks") == "request,column,page,rope,kv" for op in guards)
    assert all(op.attr("window") == 8 and op.attr("absent") is True for op in guards)  # c4a: 8 rows, ratio 4
    plain = [op for op in _lower(spec).ops if op.name in ("kd.guard", "kd.ballot")]
    assert all((op.attr("checks"), op.attr("window"), op.attr("absent")) == ("", 0, False) for op in plain)

    def uncheck(op):
        if op.name not in ("kd.guard", "kd.ballot", "kd.sweeps"):
            return op
        return replace(op, attrs=tuple((k, "" if k == "checks" else v) for k, v in op.attrs))

    unchecked = replace(checked, ops=tuple(uncheck(op) for op in checked.ops))
    with pytest.raises(VerifyError, match="must be kd.(guard|ballot|sweeps) .*'checks': 'request,column"):
        verify(unchecked)
    base = make_scenario(spec, "mixed", 70, seed=11)
    sc, _ = _corrupt(base, "kv", _active_row(base))
    sc = replace(sc, spec=spec.with_(bounds=True))
    args = args_from_scenario(sc, sc.poisoned_cache())
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(IndexError):  # its guards check nothing: the row's store lands past the cache
        run_module(unchecked, args, sm_count=3)
    assert not args["bounds_error"].any()


def test_the_emitter_reads_the_checks_from_the_guard_ops_not_cc_bounds(monkeypatch) -> None:
    """The bounds checks the kernel runs are the guard ops' attributes: an edited cc.bounds
    (unverified) changes no byte of the source, an edited guard does."""
    from compressc.kernels import emitter

    checked = _lower(make_spec("c4a", bounds=True))
    def body(module) -> str:  # the spec hash names the spec, cc.bounds included
        return "\n".join(line for line in emit(module, "default").splitlines() if "spec hash" not in line)

    want = body(checked)
    monkeypatch.setattr(emitter, "verify", lambda module: module)
    bounds = checked.replace_ops("cc.bounds", lambda op: replace(op, attrs=(("checks", "kv"), ("window", 4),
                                                                           ("ratio", 4))))
    assert body(bounds) == want

    def edit(op):
        if op.name not in ("kd.guard", "kd.ballot", "kd.sweeps"):
            return op
        return replace(op, attrs=tuple((k, False if k == "absent" else v) for k, v in op.attrs))

    no_clamp = replace(checked, ops=tuple(edit(op) for op in checked.ops))
    assert "absent rows read column 0's page" in want
    assert "absent rows read column 0's page" not in body(no_clamp)
    with pytest.raises(VerifyError, match="must be kd.(guard|ballot|sweeps) .*'absent': True"):
        verify(no_clamp)
