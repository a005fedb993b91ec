"""The fused CSA kernel on a CPU (docs/kernels.md §12): spec and ABI, IR round trip, verifier
rules, fuse-parts, the interpreter's bytes of both caches against the two kernels' reference,
the emitted source, real cubins, and the runtime op's argument checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compressc.acceptance import compare_cache_bytes
from compressc.driver.cubin import check_cubin
from compressc.ir import parse_module, print_module
from compressc.ir.core import Op
from compressc.ir.from_spec import module_from_spec
from compressc.ir.fused import PART_ARG, part_modules
from compressc.ir.interp import args_from_scenario, run_module
from compressc.ir.interp_fused import args_from_csa_scenario, run_fused
from compressc.ir.launch import launch_info
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.passes.manager import (
    PassManager,
    PipelineError,
    parse_pipeline,
    pipeline_string,
    resolve_pipeline,
)
from compressc.runtime import csa, ops
from compressc.runtime.bounds import IndexOutOfBoundsError
from compressc.scenarios import SENTINEL
from compressc.scenarios_csa import csa_scenario
from compressc.specs import SpecError, default_specs, make_spec
from compressc.specs.abi import abi
from compressc.specs.csa import INDEXERS, SHIPPED_PAIRS, all_pairs, csa_specs, parts
from compressc.specs.launch import GridRule

FORMATS = ("fp8_ds_mla", "full_bf16", "full_fp8")
ALL = csa_specs(all_pairs(), ("bf16",), (False, True))
IDX_ROWS = "thread-map{grid=rows},vectorize,lower-reduction,plan-smem,window-prefetch"


def lowered(spec, pipeline: str = "default", arch: str = "sm_90a"):
    module = module_from_spec(spec)
    passes = parse_pipeline(resolve_pipeline(pipeline, module, arch))
    return PassManager(passes).run(module), pipeline_string(passes)


# -- spec, ABI, matrix --------------------------------------------------------------------
def test_variant_names_and_parts():
    spec = make_spec("csa", cache_format="full_fp8", indexer="indexer_mxfp4", rotate=True)
    assert spec.variant == "csa_h512_q64_r64_bf16_full_fp8_idxmxfp4_rot"
    main, indexer = parts(spec)
    assert (main.variant, indexer.variant) == (
        "c4a_h512_q64_r64_bf16_full_fp8",
        "indexer_mxfp4_h128_q32_r64_bf16_rot",
    )


def test_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="indexer.*must be one of indexer_fp8, indexer_mxfp4"):
        make_spec("csa", indexer="indexer_int8")
    with pytest.raises(SpecError, match="cache_format"):
        make_spec("csa", cache_format="indexer_fp8")
    with pytest.raises(SpecError, match="indexer.*only for the csa kernel"):
        make_spec("c4a", indexer="indexer_fp8")


def test_abi_shares_only_the_token_metadata():
    names = [p.name for p in abi(make_spec("csa"))]
    assert "positions" in names and "token_to_req_indices" in names and "num_rows" in names
    for per_part in (
        "block_table",
        "state_cache",
        "k_cache",
        "kv_slot_mapping",
        "slot_mapping",
        "state_block_shift",
    ):
        assert f"main_{per_part}" in names and f"indexer_{per_part}" in names
    assert len(names) == len(set(names))


def test_default_matrix_ships_the_documented_subset():
    shipped = {
        (s.cache_format, s.indexer, s.rotate, s.weight_dtype) for s in default_specs() if s.kernel == "csa"
    }
    assert shipped == {(f, i, False, "bf16") for f, i in SHIPPED_PAIRS}
    assert {f for f, _ in SHIPPED_PAIRS} == set(FORMATS) and {i for _, i in SHIPPED_PAIRS} == set(INDEXERS)
    assert len(all_pairs()) == len(FORMATS) * len(INDEXERS)


def test_grid_rule_parts_round_trip():
    rule = GridRule("runs", 4, parts=2)
    assert rule.spelling() == "runs:4,parts:2" and GridRule.parse("runs:4,parts:2") == rule
    assert GridRule.parse("rows,parts:2") == GridRule("rows", parts=2)
    with pytest.raises(ValueError, match="parts"):
        GridRule.parse("wave:8,cluster:2,parts:2")


# -- IR, passes, verifier ---------------------------------------------------------------------
@pytest.mark.parametrize("spec", ALL[::3], ids=lambda s: s.variant)
def test_round_trip_spec_and_lowered(spec):
    module = module_from_spec(spec)
    assert parse_module(print_module(module)) == verify(module)
    out, _ = lowered(spec)
    assert parse_module(print_module(out)) == out


def test_fuse_parts_row_groups_and_launch():
    out, pipeline = lowered(make_spec("csa", indexer="indexer_mxfp4"))
    assert " | " in pipeline and "thread-map{grid=rows}" in pipeline.split(" | ")[1]
    main, indexer = part_modules(out)
    assert indexer.find("kd.row_groups").attr("groups") == main.get("threads") // indexer.get("threads")
    assert indexer.find("kd.cta_row") is None and main.find("kd.row_groups") is None
    rows = indexer.find("kd.row_groups")  # the lanes of a group, as the emitter prints them
    assert rows.attr("head_lanes") == indexer.get("head_lanes")
    assert rows.attr("elems") == indexer.get("elems_per_lane")
    launch = launch_info(out)
    assert launch.block == (main.get("threads"), 1, 1) and launch.grid.parts == 2
    assert launch.params == abi(make_spec("csa", indexer="indexer_mxfp4"))


def test_main_part_keeps_its_tuned_schedule():
    spec = make_spec("csa")
    alone, _ = lowered(parts(spec)[0])
    out, _ = lowered(spec)
    assert part_modules(out)[0].sched == alone.sched


def test_a_runs_indexer_cannot_be_fused():
    module = module_from_spec(make_spec("csa"))
    text = "thread-map,vectorize,lower-reduction,plan-smem,window-prefetch | " + IDX_ROWS.replace(
        "{grid=rows}", ""
    )
    with pytest.raises(PipelineError, match="needs grid=rows and no shared memory"):
        PassManager(parse_pipeline(text)).run(module)


def test_one_pipeline_per_part():
    module = module_from_spec(make_spec("csa"))
    with pytest.raises(ValueError, match="has 2 parts; the pipeline gives 3"):
        resolve_pipeline("derived | derived | derived", module, "sm_90a")


def _edit(module, pick, change):
    ops_ = list(module.ops)
    i = next(i for i, op in enumerate(ops_) if pick(op))
    ops_[i] = change(ops_[i])
    return replace(module, ops=tuple(ops_))


def test_verifier_refuses_a_wrong_part():
    module = module_from_spec(make_spec("csa"))
    bad = _edit(
        module,
        lambda op: op.name == "cc.part" and op.attr("part") == "indexer",
        lambda op: replace(op, attrs=tuple((k, 256 if k == "head" else v) for k, v in op.attrs)),
    )
    with pytest.raises(VerifyError, match="the part of csa_h512_q64_r64_bf16_idxfp8 is indexer_fp8"):
        verify(bad)


def test_verifier_refuses_a_wrong_binding():
    module = module_from_spec(make_spec("csa"))
    bad = _edit(
        module,
        lambda op: op.name == PART_ARG and op.attr("binds") == "indexer_block_table",
        lambda op: replace(
            op, attrs=tuple((k, "main_block_table" if k == "binds" else v) for k, v in op.attrs)
        ),
    )
    with pytest.raises(VerifyError, match="binds='main_block_table'.*'indexer_block_table'"):
        verify(bad)


def test_verifier_refuses_an_edited_part_program():
    out, _ = lowered(make_spec("csa"))
    bad = _edit(out, lambda op: op.name == "kd.row_groups", lambda op: replace(op, attrs=(("groups", 4),)))
    with pytest.raises(VerifyError, match="lower-grid program as fuse-parts rewrites it"):
        verify(bad)


def test_verifier_refuses_a_stray_op():
    module = module_from_spec(make_spec("csa"))
    bad = replace(module, ops=module.ops + (Op("cc.rope", "z"),))
    with pytest.raises(VerifyError, match="a fused module holds cc.arg, its parts"):
        verify(bad)


# -- interpreter against the reference --------------------------------------------------------
def _interpret(spec, kind, T, pipeline="default", seed=0, **options):
    out, _ = lowered(spec, pipeline)
    sc = csa_scenario(spec, kind, T, seed=seed, **options)
    got_main, got_idx = sc.poisoned_caches()
    done = run_fused(out, args_from_csa_scenario(sc, got_main, got_idx))
    alone = []  # each part's own kernel, interpreted alone on the part's inputs
    for part, s in zip(parts(spec), sc.scenarios, strict=True):
        module, _ = lowered(part, pipeline.split(" | ")[len(alone)] if " | " in pipeline else "default")
        cache = s.poisoned_cache()
        run_module(module, args_from_scenario(s, cache))
        alone.append(cache)
    return sc, done, (got_main, alone[0]), (got_idx, alone[1])


def _accepted(spec, got, sc) -> None:
    """docs/kernels.md §6 against the reference: rare one-step codes only, sentinels kept."""
    n = min(sc.T, sc.kv_slot_mapping.numel())
    report = compare_cache_bytes(
        spec,
        got,
        sc.run_reference(),
        sc.kv_slot_mapping[:n][sc.active()[:n]],
        kv_cache_block_size=sc.kv_cache_block_size,
    )
    assert report.ok and report.code_steps <= max(1, 1e-4 * report.codes), str(report)
    assert report.tokens == int(sc.active().sum()) and (got == SENTINEL).any()


@pytest.mark.parametrize("kind", ("prefill", "decode", "mixed"))
@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.variant)
def test_interpreter_writes_both_caches_as_the_reference(spec, kind):
    sc, done, main, idx = _interpret(spec, kind, 37, seed=len(spec.variant))
    active = int(sc.main.active().sum())
    assert active > 0 and len(done["main"]) == len(done["indexer"]) == active
    for (got, alone), part, s in zip((main, idx), parts(spec), sc.scenarios, strict=True):
        assert torch.equal(got, alone)  # the fused kernel writes what the two kernels write
        _accepted(part, got, s)


def test_interpreter_row_groups_loop_over_a_narrow_grid():
    """A tiled main part on a 4-SM GPU launches 4 CTAs: each row group takes several rows."""
    tiled = IDX_ROWS.replace("{grid=rows}", "{elems-per-lane=2,grid=tiled,ctas-per-sm=1}")
    spec = make_spec("csa", cache_format="full_bf16", weight_dtype="f32")
    sc, done, main, idx = _interpret(spec, "decode", 100, f"{tiled} | {IDX_ROWS}")
    assert len(done["indexer"]) == int(sc.indexer.active().sum()) == 100
    assert torch.equal(*main) and torch.equal(*idx)
    _accepted(parts(spec)[1], idx[0], sc.indexer)


def test_interpreter_catches_a_part_reading_the_other_parts_table():
    spec = make_spec("csa")
    out, _ = lowered(spec)
    sc = csa_scenario(spec, "mixed", 37, seed=3)
    got_main, got_idx = sc.poisoned_caches()
    args = args_from_csa_scenario(sc, got_main, got_idx)
    args["indexer_kv_slot_mapping"] = args["main_kv_slot_mapping"]
    run_fused(out, args)
    assert not compare_cache_bytes(
        parts(spec)[1],
        got_idx,
        sc.run_reference()[1],
        sc.indexer.kv_slot_mapping,
        kv_cache_block_size=sc.indexer.kv_cache_block_size,
    ).ok


# -- emitted source and cubins ---------------------------------------------------------------
def test_emitted_source_dispatches_to_part_methods():
    out, pipeline = lowered(make_spec("csa", indexer="indexer_mxfp4"))
    src = emit(out, pipeline)
    assert "_, part, _ = cute.arch.block_idx()" in src
    assert "self.part_main(main_state_cache, token_to_req_indices, positions, main_slot_mapping" in src
    assert (
        "self.part_indexer(indexer_state_cache, token_to_req_indices, positions, indexer_slot_mapping" in src
    )
    assert src.count("@cute.jit") == 3 and "def part_indexer(self, state_cache: cute.Pointer" in src
    assert "rgroup = tidx // 32" in src and "row = cta + ctas * (rgroup + 8 * rg_k)" in src
    assert "ops.e2m1_sw(" in src  # the indexer part's own emitters (sm_90a: software e2m1)


@pytest.mark.parametrize("arch", ("sm_90a", "sm_100a"))
def test_compiles_to_a_cubin_with_the_declared_abi(arch):
    pytest.importorskip("cutlass")
    from compressc.driver.compile import compile_source

    out, pipeline = lowered(make_spec("csa", cache_format="full_fp8", indexer="indexer_mxfp4"), arch=arch)
    launch = launch_info(out)
    art = compile_source(emit(out, pipeline), arch)
    assert art.entry == launch.entry and art.block == launch.block
    check_cubin(art.cubin, launch.entry, list(launch.params), launch.block, arch=arch)


# -- the runtime op's checks (CPU tensors: every check before the device check) ------------------
def _kwargs(**over):
    sc = csa_scenario(make_spec("csa", cache_format="full_fp8"), "mixed", 20, seed=1)
    return sc.op_kwargs() | over


@pytest.mark.parametrize(
    "over, error, text",
    [
        ({"indexer_block_table": "long"}, TypeError, "indexer_block_table must have dtype torch.int32"),
        ({"main_block_size": 3}, ValueError, "main_block_size must be a power of two"),
        ({"main_fp8_scale": None}, ValueError, "main_fp8_scale must be given for the full_fp8 cache"),
        (
            {"indexer_rms_norm_weight": "float"},
            TypeError,
            "indexer_rms_norm_weight must have the dtype of main",
        ),
        (
            {"indexer_slot_mapping": "short"},
            ValueError,
            "indexer_slot_mapping must have T = main_slot_mapping",
        ),
        ({"indexer_kernel": "indexer_x"}, ValueError, "indexer_kernel must be one of"),
        ({"main_cache_format": "int8_ds_mla"}, ValueError, "main_cache_format must be one of"),
        ({"indexer_state_cache": "wide"}, ValueError, "indexer_state_cache must have shape"),
        ({}, ValueError, "must be on a CUDA device"),
    ],
)
def test_runtime_names_each_bad_argument(monkeypatch, over, error, text):
    monkeypatch.setattr(ops, "kernel_for", lambda *a: pytest.fail("looked up a kernel before the checks"))
    kwargs = _kwargs()
    changes = {
        "long": lambda t: t.long(),
        "float": lambda t: t.float(),
        "short": lambda t: t[:5],
        "wide": lambda t: torch.zeros(4, 4, 100),
    }
    for name, value in over.items():
        kwargs[name] = changes[value](kwargs[name]) if value in changes else value
    with pytest.raises(error, match=text):
        ops.compress_csa(**kwargs)


def test_above_fused_max_t_the_parts_launch_with_their_fused_values(monkeypatch):
    """Up to FUSED_MAX_T rows one fused launch; above, the c4a then the indexer kernel, each
    parameter bound to the fused value of its part (the same values, the same step buffer)."""
    monkeypatch.setattr(csa, "check_device", lambda tensors: torch.device("cuda", 0))
    kwargs = _kwargs()
    options = ("main_cache_format", "indexer_kernel", "indexer_rotate")
    args = {k: v for k, v in kwargs.items() if k not in options}
    checked = csa.checked_csa(args, ("full_fp8", "indexer_fp8", False))
    spec = checked[2][0]
    monkeypatch.setattr(csa, "FUSED_MAX_T", 20)
    values, _, launches = csa._launches(checked)
    assert [s for s, _ in launches] == [spec] and launches[0][1] == abi(spec)
    monkeypatch.setattr(csa, "FUSED_MAX_T", 19)
    values, _, launches = csa._launches(checked)
    assert [s.kernel for s, _ in launches] == ["c4a", "indexer_fp8"]
    assert launches[0][0].cache_format == "full_fp8"
    for (part, bound), name in zip(launches, ("main", "indexer"), strict=True):
        assert [p.name for p in abi(part)] == [b.name.removeprefix(f"{name}_") for b in bound]
        assert {b.name for b in bound} <= set(values)
    shared = {b.name for b in launches[0][1]} & {b.name for b in launches[1][1]}
    assert shared == {"token_to_req_indices", "positions", "num_rows", "num_positions"}


def test_csa_arguments_maps_two_separate_calls():
    kwargs = _kwargs()
    main = {a.removeprefix("main_"): v for a, v in kwargs.items() if a.startswith("main_")}
    indexer = {a.removeprefix("indexer_"): v for a, v in kwargs.items() if a.startswith("indexer_")}
    for call in (main, indexer):
        call |= {"token_to_req_indices": kwargs["token_to_req_indices"], "positions": kwargs["positions"]}
    main["fp8_scale"] = main.pop("fp8_scale")
    got = ops.csa_arguments(main, indexer, main_cache_format="full_fp8", indexer_kernel="indexer_fp8")
    assert set(got) == set(kwargs) - {"indexer_rotate"}
    assert all(got[k] is kwargs[k] for k in got if k not in ("main_cache_format", "indexer_kernel"))


def test_cli_opt_and_emit_show_the_fused_kernel():
    from click.testing import CliRunner

    from compressc.cli import main

    opt = CliRunner().invoke(main, ["opt", "--spec", "csa", "--cache-format", "full_bf16"])
    assert opt.exit_code == 0, opt.output
    assert 'cc.part {part = "indexer", kernel = "indexer_fp8"' in opt.output and "kd.part_index" in opt.output
    emitted = CliRunner().invoke(main, ["emit", "--spec", "csa", "--rotate"])
    assert emitted.exit_code == 0, emitted.output
    assert (
        "def part_indexer" in emitted.output
        and 'ENTRY = "cutlass_csa_h512_q64_r64_bf16_idxfp8_rot"' in emitted.output
    )


def test_bounds_mode_checks_both_parts_on_the_host(monkeypatch):
    """COMPRESSC_CHECK_BOUNDS covers compress_csa (issue 17 item 5): a bad index of either part is
    named with its part's prefix before any lookup; csa has no checked build of its own."""
    monkeypatch.setattr(ops, "kernel_for", lambda *a: pytest.fail("looked up a kernel before the checks"))
    monkeypatch.setattr(ops, "check_bounds_enabled", lambda: True)
    kwargs = _kwargs()
    with pytest.raises(ValueError, match="must be on a CUDA device"):
        ops.compress_csa(**kwargs)  # every index in range: the call reaches the device check
    for part in ("main", "indexer"):
        slots = torch.full_like(kwargs[f"{part}_kv_slot_mapping"], 10**9)
        text = rf"^{part}_kv_slot_mapping\[\d+\] = 1000000000 is past {part}_k_cache: .* {part}_k_cache has"
        with pytest.raises(IndexOutOfBoundsError, match=text):
            ops.compress_csa(**(kwargs | {f"{part}_kv_slot_mapping": slots}))
    with pytest.raises(SpecError, match="csa has no checked build: COMPRESSC_CHECK_BOUNDS=1"):
        make_spec("csa", bounds=True)
