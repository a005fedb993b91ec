"""Each pass's effect (a few key fields and printed lines), pass manager and pipeline strings."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from compressc.ir import Module, print_module
from compressc.ir.from_spec import module_from_spec
from compressc.ir.launch import launch_info
from compressc.ir.verifier import VerifyError, verify
from compressc.passes import (
    ALL_PASSES,
    BASELINE_PIPELINE,
    DEFAULT_PIPELINE,
    PassManager,
    PipelineError,
    parse_pipeline,
    pipeline_string,
    resolve_pipeline,
)
from compressc.passes.lower_reduction import LowerReduction, butterfly
from compressc.passes.manager import DEFAULT_FETCH
from compressc.passes.rows_in_flight import RowsInFlight
from compressc.passes.thread_map import ThreadMap
from compressc.passes.vectorize import Vectorize
from compressc.specs import default_specs, make_spec
from compressc.specs.launch import GridRule

C4A = make_spec("c4a")
TAIL = "vectorize,lower-reduction,plan-smem"  # the passes between thread-map and the window's
C128_POOL = make_spec("c128a_compress")
C128_STORE = make_spec("c128a_store")
INDEXER = make_spec("indexer_fp8")


def _run(spec, pipeline: str) -> Module:
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


def _sched(module: Module, op_name: str) -> dict:
    op = module.find(op_name)
    assert op is not None
    return dict(op.sched)


def _line(module: Module, op_name: str) -> str:
    return next(t for t in print_module(module).splitlines() if f" {op_name}(" in t)


def _strip(module: Module) -> Module:
    return replace(module, sched=(), ops=tuple(replace(op, sched=()) for op in module.ops))


# -- thread-map ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,elems,head_lanes,split,threads,lanes_per_group,groups_per_warp",
    [
        (C4A, 8, 64, 1, 64, 8, 4),  # vLLM's tuned map: 8 fp32 per lane, 8 lanes per quant group
        (C128_POOL, 8, 64, 4, 256, None, None),  # the 128-row window split over 4 lane groups
        (C128_STORE, 8, 64, 1, 64, 8, 4),
        (INDEXER, 4, 32, 1, 32, 32, 1),  # a 128-channel head fills exactly one warp
    ],
    ids=lambda v: getattr(v, "variant", None),
)
def test_thread_map_derives_the_schedule_from_the_spec(
    spec, elems, head_lanes, split, threads, lanes_per_group, groups_per_warp
) -> None:
    module = verify(ThreadMap().apply(module_from_spec(spec)))
    keys = ("elems_per_lane", "head_lanes", "window_split", "threads", "warps")
    assert {k: module.get(k) for k in keys} == {
        "elems_per_lane": elems,
        "head_lanes": head_lanes,
        "window_split": split,
        "threads": threads,
        "warps": threads // 32,
    }
    quant = module.find("cc.quant")
    if lanes_per_group is None:
        assert quant is None
    else:
        assert dict(quant.sched) == {"lanes_per_group": lanes_per_group, "groups_per_warp": groups_per_warp}


def test_thread_map_options_give_other_legal_schedules() -> None:
    four = _run(C4A, "thread-map{elems-per-lane=4,window-split=2}")
    assert (four.get("head_lanes"), four.get("threads"), four.get("warps")) == (128, 256, 8)
    assert _sched(four, "cc.quant") == {"lanes_per_group": 16, "groups_per_warp": 2}
    assert (
        "} sched {elems_per_lane = 4, head_lanes = 128, window_split = 2, threads = 256, warps = 8"
        in print_module(four)
    )
    two = _run(C128_POOL, "thread-map{elems-per-lane=2,window-split=1}")
    assert (two.get("head_lanes"), two.get("threads")) == (256, 256)


def test_thread_map_only_sets_schedule_fields() -> None:
    for spec in default_specs():
        module = module_from_spec(spec)
        assert _strip(ThreadMap().apply(module)) == module


# -- vectorize ---------------------------------------------------------------------------------
def test_vectorize_gives_128_bit_accesses_where_a_lane_owns_16_bytes() -> None:
    module = _run(C4A, "thread-map,vectorize")
    assert _sched(module, "cc.window") == {"vector_bits": 128}
    assert _sched(module, "cc.rms_norm") == {"vector_bits": 128}  # 8 bf16 weights
    assert _sched(module, "cc.rope") == {"vector_bits": 128}  # 4 cos and 4 sin fp32 values
    codes, rope = (op.get("value_bits") for op in module.iter("cc.store"))
    assert (codes, rope) == (64, 128)  # 8 fp8 codes, 8 bf16 rope values
    assert _line(module, "cc.store").endswith("sched {value_bits = 64}")


def test_vectorize_narrows_to_each_run_and_to_its_option() -> None:
    two = _run(C4A, "thread-map{elems-per-lane=2},vectorize")
    assert _sched(two, "cc.window") == {"vector_bits": 64}
    assert _sched(two, "cc.rope") == {"vector_bits": 32}
    assert [op.get("value_bits") for op in two.iter("cc.store")] == [16, 32]
    narrow = _run(C4A, "thread-map,vectorize{bits=32}")
    assert _sched(narrow, "cc.window") == {"vector_bits": 32}
    assert [op.get("value_bits") for op in narrow.iter("cc.store")] == [32, 32]
    f32_weight = _run(make_spec("c4a", weight_dtype="f32"), "thread-map{elems-per-lane=2},vectorize")
    assert _sched(f32_weight, "cc.rms_norm") == {"vector_bits": 64}
    rows = _run(C128_STORE, "thread-map,vectorize{bits=64}")
    assert _sched(rows, "cc.load_rows") == {"vector_bits": 64}


@pytest.mark.parametrize("bits", [16, 256])
def test_vectorize_rejects_an_illegal_width(bits: int) -> None:
    with pytest.raises(PipelineError, match=rf"bad options of vectorize: vectorize bits={bits}: must be 32"):
        parse_pipeline(f"thread-map,vectorize{{bits={bits}}}")


def test_the_verifier_rejects_an_illegal_vector_width() -> None:
    module = _run(C4A, "thread-map,vectorize")
    module = module.replace_ops("cc.window", lambda op: op.with_sched(vector_bits=16))
    with pytest.raises(VerifyError, match=r"cc\.window %win: vector_bits=16: must be 32, 64 or 128"):
        verify(module)


@pytest.mark.parametrize("name", ["vectorize", "lower-reduction", "plan-smem", "rows-in-flight",
                                  "page-lookup", "rescale", "smem-stage", "l2-prefetch", "occupancy"])
def test_a_pass_after_thread_map_refuses_to_run_without_it(name: str) -> None:
    with pytest.raises(PipelineError, match=rf"{name} needs the thread map: run thread-map first, e\.g\. "
                                            rf"-p 'thread-map,{name}'"):
        _run(C4A, name)


# -- lower-reduction ---------------------------------------------------------------------------
def test_butterfly_masks() -> None:
    assert butterfly(32) == (16, 8, 4, 2, 1)
    assert butterfly(8, "up") == (1, 2, 4)
    assert butterfly(1) == ()


def test_lower_reduction_builds_shuffle_trees_and_exchanges() -> None:
    module = _run(C4A, "thread-map,lower-reduction")
    assert _sched(module, "cc.rms_norm") == {"lane_tree": (16, 8, 4, 2, 1), "cross_warp": "smem"}
    assert _sched(module, "cc.quant")["group_tree"] == (4, 2, 1)  # masked to the 8-lane group
    assert _sched(module, "cc.pool_softmax") == {"merge": "none"}
    assert "group_tree = (4, 2, 1)" in _line(module, "cc.quant")
    up = _run(C4A, "thread-map,lower-reduction{order=up}")
    assert _sched(up, "cc.rms_norm")["lane_tree"] == (1, 2, 4, 8, 16)
    assert _sched(up, "cc.quant")["group_tree"] == (1, 2, 4)


def test_lower_reduction_follows_the_thread_map() -> None:
    one_warp = _run(INDEXER, "thread-map,lower-reduction")
    assert _sched(one_warp, "cc.rms_norm")["cross_warp"] == "none"
    assert _sched(one_warp, "cc.quant")["group_tree"] == (16, 8, 4, 2, 1)
    split = _run(C128_POOL, "thread-map,lower-reduction")
    assert _sched(split, "cc.pool_softmax") == {"merge": "smem"}


# -- plan-smem ------------------------------------------------------------------------------------
def test_plan_smem_lays_out_slots_and_counts_barriers() -> None:
    c4a = _run(C4A, "thread-map,lower-reduction,plan-smem")
    assert _sched(c4a, "cc.rms_norm")["smem_offset"] == 0
    assert (c4a.get("smem_bytes"), c4a.get("barriers")) == (16, 1)  # 2 warp partials, 16-byte aligned
    pool = _run(C128_POOL, "thread-map,lower-reduction,plan-smem")
    assert _sched(pool, "cc.pool_softmax")["smem_offset"] == 0
    assert pool.get("smem_bytes") == 3 * 4 * 4 * 512  # (m, l, a) per channel and split group
    indexer = _run(INDEXER, "thread-map,lower-reduction,plan-smem")
    assert (indexer.get("smem_bytes"), indexer.get("barriers")) == (0, 0)
    assert "smem_offset" not in _sched(indexer, "cc.rms_norm")


def test_plan_smem_stacks_two_exchanges() -> None:
    module = _run(C4A, "thread-map{window-split=2},lower-reduction,plan-smem")
    assert _sched(module, "cc.pool_softmax")["smem_offset"] == 0
    assert _sched(module, "cc.rms_norm")["smem_offset"] == 3 * 4 * 2 * 512
    assert (module.get("smem_bytes"), module.get("barriers")) == (3 * 4 * 2 * 512 + 16, 2)


# -- rows-in-flight (the other window passes: tests/test_window_passes.py) -------------------------
def test_rows_in_flight() -> None:
    def rows_in_flight(spec, pipeline: str) -> int:
        return _sched(_run(spec, pipeline), "cc.window")["rows_in_flight"]

    assert rows_in_flight(C4A, "thread-map,rows-in-flight") == 8
    assert rows_in_flight(C4A, "thread-map{window-split=4},rows-in-flight") == 2
    assert rows_in_flight(C128_POOL, "thread-map,rows-in-flight") == 8  # 32 rows per split group
    rows = _run(C128_POOL, "thread-map,rows-in-flight{rows=4}")
    assert "rows_in_flight = 4" in _line(rows, "cc.window")
    no_window = _run(C128_STORE, "thread-map,rows-in-flight")
    assert all(op.get("rows_in_flight") is None for op in no_window.ops)


def test_rows_in_flight_rejects_rows_that_do_not_divide_the_group() -> None:
    with pytest.raises(PipelineError, match=r"rows-in-flight rows=3: must divide the 8 window rows each "
                                            r"split group pools"):
        _run(C4A, "thread-map,rows-in-flight{rows=3}")
    module = _run(C4A, "thread-map,rows-in-flight")  # a hand-edited .cir: the verifier's rule
    with pytest.raises(VerifyError, match=r"rows_in_flight=3: must divide the 8 rows each split group pools"):
        verify(module.replace_ops("cc.window", lambda op: op.with_sched(rows_in_flight=3)))


# -- all passes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", ["default", "baseline"])
@pytest.mark.parametrize("spec", [s for s in default_specs() if s.kernel != "csa"], ids=lambda s: s.variant)
def test_passes_only_fill_schedule_fields(spec, pipeline: str) -> None:
    # csa's per-part pipeline rewrites its parts' programs (fuse-parts): tests/test_csa.py
    module = module_from_spec(spec)
    for p in parse_pipeline(resolve_pipeline(pipeline, module)):
        after = verify(p.apply(module))
        assert _strip(after) == _strip(module), p.name
        module = after
    assert module.get("smem_bytes") is not None


def test_every_pass_is_listed_once_with_a_kebab_case_name() -> None:
    names = [p.name for p in ALL_PASSES]
    assert names == ["thread-map", "vectorize", "lower-reduction", "plan-smem", "rows-in-flight",
                     "page-lookup", "rescale", "smem-stage", "l2-prefetch", "operand-loads", "occupancy",
                     "cache-hints", "overlap-launch", "quant-convert", "lower-row", "lower-grid"]
    # lower-row and lower-grid end every pipeline by themselves; quant-convert is the target's
    # (resolve_pipeline); the smem stage and the L2 prefetch are off unless named
    off = {"smem-stage", "l2-prefetch"}
    assert DEFAULT_PIPELINE == ",".join(n for n in names[:-3] if n not in off)


# -- pipeline strings ------------------------------------------------------------------------------------
def test_pipeline_strings_parse_to_passes_and_spell_back() -> None:
    text = (
        "thread-map{elems-per-lane=4,window-split=2},vectorize{bits=64},lower-reduction{order=up},plan-smem"
    )
    passes = parse_pipeline(text)
    assert passes == [ThreadMap(4, 2), Vectorize(64), LowerReduction("up"), parse_pipeline("plan-smem")[0]]
    assert pipeline_string(passes) == text
    assert (
        pipeline_string(parse_pipeline("thread-map{elems-per-lane=0},vectorize{bits=128}"))
        == "thread-map,vectorize"
    )
    assert parse_pipeline(" rows-in-flight{ rows = 2 } ") == [RowsInFlight(2)]
    assert parse_pipeline("") == []
    assert pipeline_string(parse_pipeline("default")) == DEFAULT_PIPELINE


def test_baseline_pipeline_keeps_a_quant_group_inside_a_warp() -> None:
    assert resolve_pipeline("baseline", module_from_spec(C4A)) == BASELINE_PIPELINE
    for spec, elems in ((C4A, 2), (INDEXER, 4)):
        first = parse_pipeline(resolve_pipeline("baseline", module_from_spec(spec)))[0]
        assert (first.name, first.elems_per_lane, first.window_split) == ("thread-map", elems, 1)
    assert resolve_pipeline("thread-map", module_from_spec(C4A)) == "thread-map"


THREAD_MAP_OPTIONS = ", ".join(f.name.replace("_", "-") for f in dataclasses.fields(ThreadMap))


@pytest.mark.parametrize(
    "text,column,message",
    [
        (
            "thread-map,bogus",
            12,
            "unknown pass 'bogus'; passes: thread-map, vectorize, lower-reduction, plan-smem, "
            "rows-in-flight, page-lookup, rescale, smem-stage, l2-prefetch, operand-loads, occupancy, "
            "cache-hints, overlap-launch, quant-convert, lower-row, lower-grid (alias: window-prefetch)",
        ),
        (
            "thread-map{elems=4}",
            12,
            f"unknown option 'elems' of thread-map; options: {THREAD_MAP_OPTIONS}",
        ),
        ("plan-smem{x=1}", 11, "unknown option 'x' of plan-smem; options: none"),
        ("vectorize{bits}", 11, "option 'bits' of vectorize needs a value: bits=..."),
        ("vectorize{bits=wide}", 11, "bad value 'wide' for bits"),
        (
            "lower-reduction{order=sideways}",
            1,
            "bad options of lower-reduction: order='sideways': must be 'down' or 'up'",
        ),
        ("thread-map,vectorize{bits=64", 21, "'{' is never closed"),
        ("vectorize,thread-map{elems-per-lane=4}x", 11, "options of 'thread-map' must end with '}'"),
        ("thread-map},vectorize", 11, "'}' without a matching '{'"),
    ],
)
def test_pipeline_errors_give_the_column(text: str, column: int, message: str) -> None:
    with pytest.raises(PipelineError) as err:
        parse_pipeline(text)
    head, echo, caret = str(err.value).split("\n")
    assert head == f"pipeline column {column}: {message}"
    assert echo == f"  {text}"
    assert caret == "  " + " " * (column - 1) + "^"


# -- the pass manager -------------------------------------------------------------------------------------
def _manager(**flags) -> tuple[PassManager, list[str]]:
    printed: list[str] = []
    return PassManager(parse_pipeline("default"), out=printed.append, **flags), printed


def test_print_ir_after_all_dumps_every_stage() -> None:
    manager, printed = _manager(print_after_all=True)
    lowered = manager.run(module_from_spec(C4A))
    assert [p.splitlines()[0] for p in printed] == ["// -----// IR Dump Before thread-map //----- //"] + [
        f"// -----// IR Dump After {name} //----- //" for name in [*DEFAULT_PIPELINE.split(","), "lower-grid"]
    ]
    assert printed[0].split("\n", 1)[1] == print_module(module_from_spec(C4A))  # the spec IR first
    assert printed[-1].split("\n", 1)[1] == print_module(lowered)
    assert "elems_per_lane = 8" in printed[1] and "vector_bits" not in printed[1]


def test_print_ir_after_change_skips_passes_that_change_nothing() -> None:
    printed: list[str] = []
    passes = parse_pipeline("thread-map,thread-map,vectorize")
    PassManager(passes, print_after_change=True, out=printed.append).run(module_from_spec(C128_STORE))
    # The second thread-map recomputes the same map.
    assert [p.splitlines()[0] for p in printed] == [
        "// -----// IR Dump After thread-map //----- //",
        "// -----// IR Dump After vectorize //----- //",
    ]


def test_time_passes_reports_each_pass() -> None:
    manager, printed = _manager(time_passes=True)
    manager.run(module_from_spec(C4A))
    assert len(printed) == 1
    lines = printed[0].splitlines()
    assert lines[0] == "// ----- Pass execution timing report ----- //"
    assert [line.split()[-1] for line in lines[1:]] == [*DEFAULT_PIPELINE.split(","), "lower-grid"]
    assert all(" ms (" in line for line in lines[1:])
    assert [name for name, _ in manager.timings] == [*DEFAULT_PIPELINE.split(","), "lower-grid"]


def test_manager_verifies_its_input_first() -> None:
    module = module_from_spec(C4A).with_sched(elems_per_lane=3, head_lanes=1, threads=32, warps=1)
    with pytest.raises(VerifyError, match="elems_per_lane=3"):
        PassManager([]).run(module)


# -- the launch grid and early operand loads (thread-map grid, operand-loads) --
def _lower(spec_kernel: str, pipeline: str):
    from compressc.ir.from_spec import module_from_spec
    from compressc.passes.manager import PassManager, parse_pipeline
    from compressc.specs import make_spec

    return PassManager(parse_pipeline(pipeline)).run(module_from_spec(make_spec(spec_kernel)))


def test_thread_map_tiles_the_grid_by_thread_slots():
    c4a = _lower("c4a", "thread-map{grid=tiled}")
    assert (c4a.get("grid"), c4a.get("ctas_per_sm")) == ("tiled", 32)  # 64 threads: the 32-CTA limit
    c128 = _lower("c128a_compress", "thread-map")
    assert (c128.get("grid"), c128.get("threads"), c128.get("ctas_per_sm")) == ("tiled", 256, 8)  # 2048 / 256
    assert _lower("c128a_store", "thread-map").get("grid") == "tiled"  # no window to unroll
    rows = _lower("c4a", "thread-map{grid=rows}")
    assert (rows.get("grid"), rows.get("ctas_per_sm")) == ("rows", 0)
    assert _lower("c4a", "thread-map{ctas-per-sm=4}").get("ctas_per_sm") == 4


def test_thread_map_derives_runs_of_ratio_rows_where_the_window_is_unrolled():
    for kernel in ("c4a", "indexer_fp8"):  # 8-row windows: straight-line, a run of 4 rows (ratio 4)
        module = _lower(kernel, "thread-map")
        assert (module.get("grid"), module.get("rows_per_cta"), module.get("ctas_per_sm")) == ("runs", 4, 0)
    assert _lower("c4a", "thread-map{grid=runs,rows-per-cta=8}").get("rows_per_cta") == 8
    # an explicit ctas-per-sm only means something for the tiled grid, so it picks that grid
    assert _lower("c4a", "thread-map{ctas-per-sm=8}").get("grid") == "tiled"
    with pytest.raises(ValueError, match="grid='waves': must be 'auto', 'tiled', 'runs' or 'rows'"):
        _lower("c4a", "thread-map{grid=waves}")
    # options of another grid are refused, not ignored
    with pytest.raises(ValueError, match="rows-per-cta=8 is the run of grid=runs; the grid here is 'tiled'"):
        _lower("c128a_compress", "thread-map{rows-per-cta=8}")
    with pytest.raises(ValueError, match="ctas-per-sm=3 sizes the tiled grid's wave; the grid here is 'runs"):
        _lower("c4a", "thread-map{grid=runs,ctas-per-sm=3}")
    assert _lower("c128a_compress", "thread-map{grid=runs}").get("rows_per_cta") == 32  # not the ratio 128


def test_verifier_rejects_an_impossible_grid():
    from compressc.ir.verifier import VerifyError, verify

    module = _lower("c4a", "thread-map{grid=tiled}")
    with pytest.raises(VerifyError, match=r"ctas_per_sm=40: must be 1\.\.32 for a tiled grid"):
        verify(module.with_sched(ctas_per_sm=40))
    with pytest.raises(VerifyError, match=r"grid='waves': must be 'rows'"):
        verify(module.with_sched(grid="waves"))
    with pytest.raises(VerifyError, match=r"rows_per_cta=33: must be 1\.\.32 for a 'runs' grid"):
        verify(module.with_sched(grid="runs", rows_per_cta=33))
    with pytest.raises(VerifyError, match=r"min_ctas_per_sm=64: must keep min_ctas_per_sm \* threads \(64\)"):
        verify(module.with_sched(min_ctas_per_sm=64))


def test_operand_loads_issues_epilogue_operands_early_unless_told():
    early = _lower("c4a", "thread-map,vectorize,lower-reduction,plan-smem,rows-in-flight,operand-loads")
    assert early.find("cc.rms_norm").get("load") == "early" and early.find("cc.rope").get("load") == "early"
    late = _lower("c4a", "thread-map,vectorize,lower-reduction,plan-smem,rows-in-flight,"
                         "operand-loads{at=late}")
    assert late.find("cc.rms_norm").get("load") == "late" and late.find("cc.rope").get("load") == "late"
    with pytest.raises(PipelineError, match="operand-loads at='soon': must be 'early' or 'late'"):
        parse_pipeline("operand-loads{at=soon}")


def test_emitted_tiled_kernel_loops_over_its_rows_and_loads_operands_first():
    from compressc.kernels.emitter import emit

    pipeline = f"thread-map{{grid=tiled}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    module = _lower("c4a", pipeline)
    text = emit(module, pipeline)
    assert launch_info(module).grid == GridRule("wave", 32) and "# launch:    grid wave:32," in text
    assert "todo = cute.arch.vote_ballot_sync(mine)" in text
    # sweeps of 32 rows per warp, one ballot each, so a CTA may own any number of rows
    assert "for sweep in cutlass.range((per_cta + 63) // 64, unroll=1):" in text
    assert "sTodo[warp] = Int32(todo)" in text
    assert "for sw_k in cutlass.range(ops.popc(wtodo), unroll=1):" in text
    one_warp = f"thread-map{{grid=tiled,elems-per-lane=4}},{TAIL},{DEFAULT_FETCH}"
    text = emit(_lower("indexer_fp8", one_warp), one_warp)  # one warp: blocks of 32 rows
    assert "for blk in cutlass.range((per_cta + 31) // 32, unroll=1):" in text
    # the weight and the cos/sin loads come before the window gather
    assert text.index("rms_norm_weight + cute.assume(col") < text.index("rKV = cute.make_rmem_tensor")
    assert text.index("cos_sin_cache + cute.assume(cs_row") < text.index("rKV = cute.make_rmem_tensor")
    baseline = ("thread-map{grid=rows},vectorize,lower-reduction,plan-smem,rows-in-flight,"
                "operand-loads{at=late}")
    module = _lower("c4a", baseline)
    text = emit(module, baseline)
    assert launch_info(module).grid == GridRule("rows") and "vote_ballot_sync" not in text
    assert text.index("rms_norm_weight + cute.assume(col") > text.index("rKV = cute.make_rmem_tensor")


def test_emitted_runs_kernel_unrolls_its_longest_run():
    from compressc.kernels.emitter import emit

    pipeline = f"thread-map{{grid=runs,rows-per-cta=8}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    module = _lower("c4a", pipeline)
    text = emit(module, pipeline)
    assert launch_info(module).grid == GridRule("runs", 8) and "for i in range_constexpr(8):" in text
    assert "cutlass.range(" not in text  # no dynamic loop: ptxas would sink the loads
    # the run comes from the launch (at most 8): one row per CTA while the SMs have room
    assert "per_cta = (num_rows + ctas - 1) // ctas" in text
    assert "if lane < per_cta and row < num_rows:" in text


def test_window_page_lookup_one_lane_per_row():
    from compressc.ir.verifier import VerifyError, verify
    from compressc.kernels.emitter import emit

    tail = "vectorize,lower-reduction,plan-smem"
    c128 = _lower("c128a_compress", f"thread-map,{tail},{DEFAULT_FETCH}")
    assert c128.find("cc.window").get("page_lookup") == "lane"  # 32 rows per split group
    text = emit(c128, "x")
    assert text.count("mBT[") == text.count("wpage = mBT[") and "ops.shfl_idx(wpage, Int32(k0 + r))" in text
    assert "k0 = chunk * 8" in text  # each batch reads its rows' pages from lanes k0 ..
    # a whole 128-row window in one group is too many rows for the 32 lanes of a warp
    unsplit = _lower("c128a_compress", f"thread-map{{window-split=1}},{tail},{DEFAULT_FETCH}")
    assert unsplit.find("cc.window").get("page_lookup") == "row"
    with pytest.raises(VerifyError, match="page_lookup='lane': 'lane' needs at most 32 rows per split group"):
        verify(unsplit.replace_ops("cc.window", lambda op: op.with_sched(page_lookup="lane")))
    baseline = _lower("c4a", "baseline")
    assert baseline.find("cc.window").get("page_lookup") == "row"
    text = emit(baseline, "baseline")
    assert "wpage" not in text and "page = Int64(mBT[" in text


def test_emit_names_the_missing_pass():
    from compressc.ir.verifier import VerifyError
    from compressc.kernels.emitter import emit

    pipeline = "thread-map{elems-per-lane=4},vectorize{bits=64},lower-reduction,plan-smem"
    missing = "cc.window rows_in_flight is unset: emit needs the rows-in-flight pass"
    with pytest.raises(VerifyError, match=missing):
        emit(_lower("c4a", pipeline), pipeline)


_LOOP_PIPELINES = [
    "derived",
    "baseline",
    f"thread-map{{grid=tiled}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}",
    f"thread-map{{grid=tiled,elems-per-lane=4}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}",
    f"thread-map{{grid=runs,rows-per-cta=8}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}",
    "thread-map{grid=tiled},vectorize,lower-reduction,plan-smem,rows-in-flight,page-lookup,rescale{per=row},smem-stage",
    f"thread-map{{elems-per-lane=4,window-split=2,cluster-split=2}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}",
]


_STAGED = _LOOP_PIPELINES[-2]
_CLUSTER = _LOOP_PIPELINES[-1]
_LOOP_CASES = [
    (kernel, pipeline)
    for kernel in ("c4a", "c128a_compress", "c128a_store", "indexer_fp8")
    for pipeline in _LOOP_PIPELINES
    if not (pipeline == _STAGED and kernel.startswith("c128a"))  # see the test below
    and not (pipeline == _CLUSTER and kernel == "c128a_store")  # no window to split
]


def test_cluster_split_needs_a_tiled_window_kernel():
    from compressc.passes.manager import PipelineError

    with pytest.raises(PipelineError, match="cluster-split=3: must be one of 1, 2, 4, 8"):
        _lower("c128a_compress", "thread-map{cluster-split=3}")
    with pytest.raises(PipelineError, match="cluster-split=2 needs the tiled grid; the grid here is 'runs'"):
        _lower("c4a", "thread-map{grid=runs,cluster-split=2}")
    with pytest.raises(PipelineError, match="cluster-split=2: this kernel has no window to split"):
        _lower("c128a_store", "thread-map{cluster-split=2}")
    module = _lower("c4a", f"thread-map{{cluster-split=2}},{TAIL},{DEFAULT_FETCH}")
    assert module.get("grid") == "tiled" and module.find("cc.pool_softmax").get("merge") == "smem"
    assert module.find("cc.window").get("rows_in_flight") == 4  # 8 rows / 2 CTAs
    # rank 0's region holds the 7 peers' partials of a cluster of 8: 3 x 7 x 512 fp32
    eight = _lower("c128a_compress", "thread-map{elems-per-lane=4,window-split=1,cluster-split=8},"
                   f"vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")
    assert eight.get("smem_bytes") == 3 * 7 * 512 * 4
    # the CTA's own merge (groups 1..3) and the peers' partials use the same slots, one after the other
    four = _lower("c128a_compress", "thread-map{elems-per-lane=4,window-split=4,cluster-split=8},"
                  f"vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")
    assert four.get("smem_bytes") == 3 * 7 * 512 * 4


def test_verifier_checks_the_cluster_split():
    from compressc.ir.verifier import VerifyError, verify

    module = _lower("c128a_compress", _CLUSTER)
    with pytest.raises(VerifyError, match="cluster_split=3: must be 1, 2, 4 or 8"):
        verify(module.with_sched(cluster_split=3))
    with pytest.raises(VerifyError, match="cluster_split=2: needs the tiled grid .*have 'rows'"):
        verify(module.with_sched(grid="rows"))
    with pytest.raises(VerifyError, match="rows_in_flight=16: must divide the 8 rows each split group pools"):
        verify(module.with_sched(cluster_split=8).replace_ops(
            "cc.window", lambda op: op.with_sched(rows_in_flight=16)))
    with pytest.raises(VerifyError, match="merge='none': must be 'smem' for window_split=1, cluster_split=2"):
        one = _lower("c128a_compress", "thread-map{elems-per-lane=4,window-split=1,cluster-split=2},"
                     f"vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")
        verify(one.replace_ops("cc.pool_softmax", lambda op: op.with_sched(merge="none")))


def test_emitted_cluster_kernel_meets_at_two_cluster_barriers_and_stores_from_rank_0():
    from compressc.kernels.emitter import emit

    module = _lower("c128a_compress", _CLUSTER)
    text = emit(module, _CLUSTER)
    assert launch_info(module).grid.spelling() == "wave:8,cluster:2" and "grid wave:8,cluster:2," in text
    assert "cluster=[2, 1, 1]" in text and "cta = cta // 2" in text and "ctas = ctas // 2" in text
    # rank r pools window rows r * 64 + group * 32 ...: its half, then its group's quarter
    assert "i0 = rank * 64 + group * 32 + chunk * 8" in text
    for body in (text[text.index("if ctas >= num_rows:"):text.index("else:\n            # tiled grid")],
                 text[text.index("# tiled grid"):]):
        lines = body.splitlines()
        syncs = [line for line in lines if "ops.cluster_sync()" in line]
        assert len(syncs) == 2, body
        # the barriers sit at the row body's own depth: no `if group`/`if rank` around them
        row_depth = len(next(line for line in lines if "rM.fill(" in line)) - len(
            next(line for line in lines if "rM.fill(" in line).lstrip())
        assert all(len(line) - len(line.lstrip()) == row_depth for line in syncs)
        first, second = (body.index(line) for line in syncs)
        push = body.index("ops.st_dsmem_f32(")
        assert first < push < second < body.index("mg = sBuf[0 + k * 512 + col + e]")
        store = body.index("kv_at = compressed_kv.toint()")
        assert body.rindex("if rank == 0:", 0, store) > second


def test_cluster_kernel_compiles_to_a_cubin_with_cluster_barriers_and_dsmem_stores():
    pytest.importorskip("cutlass")
    from compressc.driver.compile import compile_source
    from compressc.kernels.emitter import emit

    artifacts = compile_source(emit(_lower("c128a_compress", _CLUSTER), _CLUSTER), "sm_90a")
    assert artifacts.block == (256, 1, 1)
    ptx = artifacts.ptx
    assert ptx.count("barrier.cluster.arrive.release.aligned") == 4  # two per row body, two bodies
    assert "mapa.shared::cluster.u32" in ptx and "st.shared::cluster.f32" in ptx
    assert artifacts.report.spill_stores == 0 and artifacts.report.stack == 0


def test_the_staged_window_refuses_the_c128_kernels():
    from compressc.passes.manager import PipelineError

    with pytest.raises(PipelineError, match="smem-stage needs .*window-split=1"):
        _lower("c128a_compress", _STAGED)  # a split 128-row window
    with pytest.raises(PipelineError, match="smem-stage: the kernel has no window to stage"):
        _lower("c128a_store", _STAGED)


@pytest.mark.parametrize(("kernel", "pipeline"), _LOOP_CASES)
def test_no_row_body_reassigns_a_dynamic_loop_variable(kernel, pipeline):
    """A dynamic loop's variable must survive the body: a row body whose own constexpr
    loop reuses the name would send every later row of the loop to the wrong place (the
    RMS exchange loops over `w`, for one)."""
    import ast

    from compressc.ir.from_spec import module_from_spec
    from compressc.kernels.emitter import emit
    from compressc.passes.manager import PassManager, parse_pipeline, resolve_pipeline
    from compressc.specs import make_spec

    spec_module = module_from_spec(make_spec(kernel))
    module = PassManager(parse_pipeline(resolve_pipeline(pipeline, spec_module))).run(spec_module)
    tree = ast.parse(emit(module, pipeline))
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For)):
        call = loop.iter
        if not (isinstance(call, ast.Call) and ast.unparse(call.func) == "cutlass.range"):
            continue
        name = loop.target.id
        for node in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.For, ast.AugAssign)):
                targets = [node.target]
            assert all(not (isinstance(t, ast.Name) and t.id == name) for t in targets), (
                f"{kernel} / {pipeline}: the body of `for {name} in cutlass.range(...)` reassigns {name}"
            )


def test_tiled_kernel_takes_the_row_grid_path_when_each_cta_has_one_row():
    from compressc.kernels.emitter import emit

    pipeline = f"thread-map,vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    text = emit(_lower("c128a_store", pipeline), pipeline)
    fast, tiled = text.index("if ctas >= num_rows:"), text.index("per_cta = (num_rows + ctas - 1) // ctas")
    assert fast < tiled and "row = cta" in text[fast:tiled] and "vote_ballot_sync" not in text[fast:tiled]
    staged = ("thread-map{grid=tiled},vectorize,lower-reduction,plan-smem,rows-in-flight,page-lookup,"
              "rescale{per=row},smem-stage")
    assert "if ctas >= num_rows:" not in emit(_lower("c4a", staged), staged)  # its rows read smem slots


def test_verifier_checks_a_staged_window_against_its_grid_and_slots():
    from compressc.ir.verifier import VerifyError, verify

    staged = _lower("c4a", _STAGED)
    assert staged.get("smem_dynamic") == 65536 and staged.find("cc.window").get("stage") == "smem"
    with pytest.raises(VerifyError, match="stage='smem': 'smem' needs the tiled grid, have 'runs'"):
        verify(staged.with_sched(grid="runs", rows_per_cta=4))
    with pytest.raises(VerifyError, match="smem_dynamic=0: must be 65536: two slots of 8 rows"):
        verify(staged.with_sched(smem_dynamic=0))
    with pytest.raises(VerifyError, match="smem_dynamic=4096: must be 0 unless the window is staged"):
        verify(_lower("c4a", "derived").with_sched(smem_dynamic=4096))


def test_overlap_launch_pairs_the_c128a_kernels():
    from compressc.ir.verifier import VerifyError, verify
    from compressc.kernels.emitter import emit

    pipeline = f"thread-map,vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    store, compress = _lower("c128a_store", pipeline), _lower("c128a_compress", pipeline)
    assert store.get("grid_dependency") == "wait" and compress.get("grid_dependency") == "trigger"
    assert _lower("c4a", pipeline).get("grid_dependency") is None  # one kernel: nothing of ours to overlap
    off = pipeline.removesuffix(",overlap-launch")
    assert _lower("c128a_store", off).get("grid_dependency") is None
    text = emit(store, pipeline)
    assert launch_info(store).programmatic and "programmatic true" in text
    # the wait sits after the metadata and operand loads, right before the pooled rows are read
    fast = text[text.index("if ctas >= num_rows:"):]
    assert fast.index("rCos = ") < fast.index("griddepcontrol_wait()") < fast.index("compressed_kv + ")
    # and every CTA waits before it exits
    body_end = text.index("C128aStoreH512Q64R64Bf16.kernel.set_name_prefix")
    assert text[:body_end].rstrip().endswith("cute.arch.griddepcontrol_wait()")
    trigger = emit(compress, pipeline)
    assert not launch_info(compress).programmatic and "griddepcontrol_launch_dependents()" in trigger
    with pytest.raises(VerifyError, match="grid_dependency='wait': needs a kernel with cc.load_rows"):
        verify(compress.with_sched(grid_dependency="wait"))
    with pytest.raises(VerifyError, match="grid_dependency='x': must be 'wait'"):
        verify(store.with_sched(grid_dependency="x"))


def test_l2_prefetch_bulk_copies_each_page_run_of_a_c128_window():
    from compressc.ir.verifier import VerifyError, verify
    from compressc.kernels.emitter import emit
    from compressc.passes.manager import PipelineError

    pipeline = ("thread-map{elems-per-lane=4,window-split=4},vectorize,lower-reduction,plan-smem,"
                "rows-in-flight,page-lookup,rescale,l2-prefetch")
    module = _lower("c128a_compress", pipeline)
    assert module.find("cc.window").get("l2_prefetch") is True
    text = emit(module, pipeline)
    # the group's first warp, after the lane page lookup and before the first batch
    at = text.index("ops.prefetch_l2_bulk(")
    assert text.index("wpage = mBT[") < at < text.index("for chunk in cutlass.range(")
    assert "if hlane < 32:" in text and "Int32(run) * 4096)" in text
    with pytest.raises(PipelineError, match="l2-prefetch needs a one-stream window"):
        _lower("c4a", "thread-map,vectorize,lower-reduction,plan-smem,rows-in-flight,page-lookup,l2-prefetch")
    with pytest.raises(PipelineError, match=r"l2-prefetch needs lane page lookups"):
        _lower("c128a_compress", "thread-map{elems-per-lane=4,window-split=2},vectorize,lower-reduction,"
               "plan-smem,rows-in-flight,page-lookup,l2-prefetch")
    with pytest.raises(VerifyError, match="l2_prefetch=True: needs page_lookup='lane'"):
        verify(module.replace_ops("cc.window", lambda op: op.with_sched(page_lookup="row")))
    pytest.importorskip("cutlass")
    from compressc.driver.compile import compile_source

    assert compile_source(text, "sm_90a").ptx.count("cp.async.bulk.prefetch.L2.global") == 2  # two row bodies


def test_cache_hints_stream_the_window_and_keep_the_written_rows():
    from compressc.kernels.emitter import emit
    from compressc.passes.manager import BASELINE_PIPELINE, DEFAULT_PIPELINE, PipelineError

    c4a = _lower("c4a", DEFAULT_PIPELINE)
    assert c4a.get("cache_hints") == "stream"
    text = emit(c4a, DEFAULT_PIPELINE)
    # every window load of the batch is a read-once load (8 fp32 a lane: 2 x 128 bits per stream),
    # none goes through autovec_copy
    assert text.count("= ops.ld_stream(state_cache.toint() + (base") == 4
    assert "cute.autovec_copy(cute.make_tensor(state_cache" not in text
    stores = [line.strip() for line in text.splitlines() if line.strip().startswith("ops.st_global_")]
    assert stores and all(line.endswith(", keep=True)") for line in stores)
    plain = _lower("c4a", BASELINE_PIPELINE)
    assert plain.get("cache_hints") is None
    text = emit(plain, BASELINE_PIPELINE)
    assert "ld_stream" not in text and "keep=True" not in text
    # C128A: the pooled rows the store kernel reads next are kept in L2 too
    compress = emit(_lower("c128a_compress", DEFAULT_PIPELINE), DEFAULT_PIPELINE)
    assert "kv_at = compressed_kv.toint() + (Int64(row) * 512 + col) * 4" in compress
    assert "ops.st_global_v4(kv_at, ops.f32_bits(rX[0]), ops.f32_bits(rX[1]), ops.f32_bits(rX[2]), " \
           "ops.f32_bits(rX[3]), keep=True)" in compress
    with pytest.raises(PipelineError, match="cache-hints='some': must be 'stream' or 'none'"):  # the alias
        _lower("c4a", "thread-map,vectorize,lower-reduction,plan-smem,window-prefetch{cache-hints=some}")
    with pytest.raises(PipelineError, match="unknown option 'policy' of cache-hints; options: none"):
        parse_pipeline("cache-hints{policy=stream}")
    with pytest.raises(VerifyError, match="cache_hints='x': must be 'stream'"):
        verify(c4a.with_sched(cache_hints="x"))


def test_cache_hints_compile_to_policy_loads_and_stores():
    pytest.importorskip("cutlass")
    from compressc.driver.compile import compile_source
    from compressc.kernels.emitter import emit
    from compressc.passes.manager import BASELINE_PIPELINE

    pipeline = f"thread-map{{elems-per-lane=4}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    ptx = compile_source(emit(_lower("indexer_fp8", pipeline), pipeline), "sm_90a").ptx
    # 4 unrolled row bodies (runs of 4) x 8 window rows x (kv, score): one 128-bit read-once load each
    assert ptx.count("ld.global.L1::no_allocate.L2::cache_hint.v4.f32") == 64
    assert "createpolicy.fractional.L2::evict_first.b64" in ptx
    assert "createpolicy.fractional.L2::evict_last.b64" in ptx and "st.global.L2::cache_hint." in ptx
    baseline = compile_source(emit(_lower("c4a", BASELINE_PIPELINE), BASELINE_PIPELINE), "sm_90a").ptx
    assert "cache_hint" not in baseline and "no_allocate" not in baseline
