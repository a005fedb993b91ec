"""The window's passes (one decision each) and the `window-prefetch` alias that spells them in one."""

from __future__ import annotations

import re

import pytest

from compressc.ir.from_spec import module_from_spec
from compressc.passes import (
    BASELINE_PIPELINE,
    DEFAULT_PIPELINE,
    PipelineError,
    parse_pipeline,
    pipeline_string,
)
from compressc.passes.manager import DEFAULT_FETCH, PassManager, resolve_pipeline
from compressc.passes.occupancy import straight_line_occupancy
from compressc.passes.smem_stage import staged_bytes
from compressc.passes.tuned import load_tuned
from compressc.passes.window_prefetch import WindowPrefetch
from compressc.specs import default_specs, make_spec

TAIL = "vectorize,lower-reduction,plan-smem"
# the baseline as it was spelled before the window passes were split
OLD_BASELINE = (
    "thread-map{elems-per-lane=2,window-split=1,grid=rows},vectorize{bits=32},lower-reduction,plan-smem,"
    "window-prefetch{rows=1,operands-early=false,page-lookup=row,overlap-launch=false,rescale=row,"
    "cache-hints=none}"
)


def _lower(kernel: str, pipeline: str):
    module = module_from_spec(make_spec(kernel))
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


def _canonical(text: str) -> str:
    return pipeline_string(parse_pipeline(text))


# -- the alias -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("old,new", [
    ("window-prefetch", DEFAULT_FETCH),
    ("window-prefetch{rows=4}", DEFAULT_FETCH.replace("rows-in-flight", "rows-in-flight{rows=4}")),
    ("window-prefetch{page-lookup=row}", DEFAULT_FETCH.replace("page-lookup", "page-lookup{by=row}")),
    ("window-prefetch{rescale=row}", DEFAULT_FETCH.replace("rescale", "rescale{per=row}")),
    ("window-prefetch{stage=smem}", DEFAULT_FETCH.replace("rescale", "rescale{per=row},smem-stage")),
    ("window-prefetch{stage=smem,rescale=batch}",  # the stage always updated row by row
     DEFAULT_FETCH.replace("rescale", "rescale{per=row},smem-stage")),
    ("window-prefetch{l2-prefetch=true}", DEFAULT_FETCH.replace("rescale", "rescale,l2-prefetch")),
    ("window-prefetch{operands-early=false}",
     DEFAULT_FETCH.replace("operand-loads", "operand-loads{at=late}")),
    ("window-prefetch{occupancy=false}", DEFAULT_FETCH.replace("occupancy,", "")),
    ("window-prefetch{cache-hints=none}", DEFAULT_FETCH.replace("cache-hints,", "")),
    ("window-prefetch{overlap-launch=false}", DEFAULT_FETCH.removesuffix(",overlap-launch")),
])
def test_the_alias_expands_each_old_option_into_its_pass(old: str, new: str) -> None:
    assert _canonical(old) == new
    assert pipeline_string(WindowPrefetch().expand()) == DEFAULT_FETCH


def test_the_alias_is_not_a_pass_and_prints_as_the_new_passes() -> None:
    assert _canonical(f"thread-map,{TAIL},window-prefetch") == DEFAULT_PIPELINE
    assert "window-prefetch" not in _canonical(OLD_BASELINE)
    with pytest.raises(PipelineError, match="unknown option 'by' of window-prefetch; options: rows, "):
        parse_pipeline("window-prefetch{by=lane}")  # the alias takes the old options only


def test_the_alias_checks_its_old_option_values_at_parse_time() -> None:
    with pytest.raises(PipelineError, match=r"column 1: bad options of window-prefetch: window-prefetch "
                                            r"stage='disk': must be 'regs' or 'smem'"):
        parse_pipeline("window-prefetch{stage=disk}")
    with pytest.raises(PipelineError, match="page-lookup by='warp': must be 'auto', 'lane' or 'row'"):
        parse_pipeline("window-prefetch{page-lookup=warp}")


@pytest.mark.parametrize("spec", default_specs(), ids=lambda s: s.variant)
def test_the_old_baseline_spelling_lowers_to_the_new_baseline(spec) -> None:
    module = module_from_spec(spec)
    new = resolve_pipeline("baseline", module)
    elems = re.search(r"elems-per-lane=(\d+)", new).group(1)  # 2, more where a quant group needs it
    old = resolve_pipeline(OLD_BASELINE.replace("elems-per-lane=2", f"elems-per-lane={elems}"), module)
    assert PassManager(parse_pipeline(old)).run(module) == PassManager(parse_pipeline(new)).run(module)
    assert new.startswith(BASELINE_PIPELINE.replace("elems-per-lane=2", f"elems-per-lane={elems}"))


def test_every_tuned_entry_still_parses_and_spells_the_new_passes() -> None:
    table = load_tuned()
    pipelines = [entry["pipeline"] for entries in table.values() for entry in entries.values()]
    assert pipelines, "passes/tuned.json has entries"
    for text in pipelines:
        canonical = _canonical(text)
        assert "window-prefetch" not in canonical and "rows-in-flight" in canonical
        assert _canonical(canonical) == canonical


# -- one pass, one decision -------------------------------------------------------------------------
def test_each_window_pass_writes_only_its_own_fields() -> None:
    base = _lower("c4a", f"thread-map,{TAIL}")
    owned = {
        "rows-in-flight": ({"rows_in_flight"}, set()), "page-lookup": ({"page_lookup"}, set()),
        "rescale": ({"rescale"}, set()), "operand-loads": (set(), set()),
        "occupancy": (set(), {"min_ctas_per_sm"}), "cache-hints": (set(), {"cache_hints"}),
        "overlap-launch": (set(), set()),  # c4a loads and stores no pooled rows: nothing to overlap
    }
    module = base
    for p in parse_pipeline(DEFAULT_FETCH):
        after = p.apply(module)
        window, window_after = dict(module.find("cc.window").sched), dict(after.find("cc.window").sched)
        assert set(window_after) - set(window) == owned[p.name][0], p.name
        assert set(dict(after.sched)) - set(dict(module.sched)) == owned[p.name][1], p.name
        module = after
    assert module.find("cc.rms_norm").get("load") == "early"


def test_rows_in_flight_options_are_checked() -> None:
    with pytest.raises(PipelineError, match="rows-in-flight rows=-1: must be 0 .derive. or a row count >= 1"):
        parse_pipeline("rows-in-flight{rows=-1}")


def test_page_lookup_by_lane_needs_a_short_group() -> None:
    lane = _lower("c128a_compress", "thread-map,page-lookup{by=lane}")
    assert lane.find("cc.window").get("page_lookup") == "lane"
    with pytest.raises(PipelineError, match=r"page-lookup by=lane needs at most 32 window rows per split "
                                            r"group \(have 128\).*raise thread-map's window-split, or use "
                                            r"by=row"):
        _lower("c128a_compress", "thread-map{window-split=1},page-lookup{by=lane}")
    assert _lower("c128a_compress", "thread-map{window-split=1},page-lookup").find("cc.window").get(
        "page_lookup") == "row"
    with pytest.raises(PipelineError, match="page-lookup by='x': must be 'auto', 'lane' or 'row'"):
        parse_pipeline("page-lookup{by=x}")


def test_rescale_and_the_smem_stage_agree_in_either_order() -> None:
    tiled = f"thread-map{{grid=tiled}},{TAIL},rows-in-flight,page-lookup"
    staged = _lower("c4a", f"{tiled},rescale{{per=row}},smem-stage")
    assert staged.find("cc.window").get("rescale") == "row" and staged.get("smem_dynamic") == staged_bytes(
        staged, 8) == 65536
    with pytest.raises(PipelineError, match=r"smem-stage needs no batch rescale \(rescale\{per=row\}"):
        _lower("c4a", f"{tiled},rescale,smem-stage")
    with pytest.raises(PipelineError, match="rescale per=batch: the smem-staged window is read back"):
        _lower("c4a", f"{tiled},smem-stage,rescale")
    assert _lower("c4a", f"{tiled},smem-stage,rescale{{per=row}}").find("cc.window").get("rescale") == "row"
    with pytest.raises(PipelineError, match="rescale per='col': must be 'batch' or 'row'"):
        parse_pipeline("rescale{per=col}")


@pytest.mark.parametrize("pipeline,message", [
    ("thread-map{grid=tiled},smem-stage", r"smem-stage needs the window's rows_in_flight: run rows-in-flight "
                                          r"first, e\.g\. -p '\.\.\.,rows-in-flight,smem-stage'"),
    ("thread-map{grid=tiled},rows-in-flight,smem-stage", "smem-stage needs the window's page_lookup: run "
                                                         "page-lookup first"),
    ("thread-map,l2-prefetch", "l2-prefetch needs the window's page_lookup: run page-lookup first"),
    ("thread-map,occupancy", "occupancy needs the window's rows_in_flight: run rows-in-flight first"),
])
def test_a_window_pass_names_the_decision_it_builds_on(pipeline: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        _lower("c4a", pipeline)


def test_the_smem_stage_lists_what_the_schedule_lacks() -> None:
    with pytest.raises(PipelineError, match=r"smem-stage needs a tiled grid \(have grid='runs': "
                                            r"thread-map\{grid=tiled\}\); the whole window in one batch"):
        _lower("c4a", "thread-map,rows-in-flight{rows=4},page-lookup,smem-stage")


def test_occupancy_asks_for_the_unrolled_windows_ctas_only() -> None:
    runs = _lower("c4a", f"thread-map,{TAIL},rows-in-flight,page-lookup,rescale,occupancy")
    assert runs.get("min_ctas_per_sm") == straight_line_occupancy(runs, 8, "batch") == 4  # 188 registers
    by_row = _lower("c4a", f"thread-map,{TAIL},rows-in-flight,page-lookup,rescale{{per=row}},occupancy")
    assert by_row.get("min_ctas_per_sm") == 6  # 168 registers: docs/pipeline.md §6
    batched = _lower("c4a", f"thread-map,{TAIL},rows-in-flight{{rows=4}},occupancy")  # a batch loop
    tiled = _lower("c4a", f"thread-map{{grid=tiled}},{TAIL},rows-in-flight,occupancy")
    assert batched.get("min_ctas_per_sm") is None and tiled.get("min_ctas_per_sm") is None
    told = _lower("c4a", f"thread-map{{min-ctas-per-sm=2}},{TAIL},rows-in-flight,occupancy")
    assert told.get("min_ctas_per_sm") == 2
    assert _lower("c4a", f"thread-map,{TAIL},rows-in-flight").get("min_ctas_per_sm") is None  # left out


def test_overlap_launch_and_cache_hints_are_on_where_named() -> None:
    named = f"thread-map,{TAIL},rows-in-flight,overlap-launch,cache-hints"
    store, compress = _lower("c128a_store", named), _lower("c128a_compress", named)
    assert (store.get("grid_dependency"), compress.get("grid_dependency")) == ("wait", "trigger")
    assert store.get("cache_hints") == compress.get("cache_hints") == "stream"
    plain = _lower("c128a_store", f"thread-map,{TAIL},rows-in-flight")
    assert plain.get("grid_dependency") is None and plain.get("cache_hints") is None
    with pytest.raises(PipelineError, match="unknown option 'on' of overlap-launch; options: none"):
        parse_pipeline("overlap-launch{on=true}")
