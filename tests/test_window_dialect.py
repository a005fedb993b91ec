"""The window as kernel-dialect ops (lower-row's cc.window, docs/pipeline.md §8).

- lower-row writes the window's kd ops (its source, page lookups, L2 prefetch, batches with
  their vector width and cache hint, the online update and its rescale; the staged window's
  read-back) and lower-grid the staged window's copies (`kd.stage_issue {row, slot}`,
  `kd.staged_wait {in_flight}`); they print, parse and re-emit the same kernel;
- the verifier refuses an edited attribute naming the op, the attribute and the rule;
- the interpreter runs them thread by thread (the staged copies through a simulated smem
  slot whose cp.async groups must be waited for): an edited `.cir` run unverified gives
  bytes the reference refuses, or a lane error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lowering import edit as _edit
from lowering import lower as _lower
from test_interp import _report

from compressc.ir import interp, parse_module, print_module
from compressc.ir.interp_row import LaneError
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.passes.manager import DEFAULT_FETCH
from compressc.specs import make_spec

_TAIL = "vectorize,lower-reduction,plan-smem"
STAGED = (f"thread-map{{grid=tiled,elems-per-lane=4}},{_TAIL},rows-in-flight,page-lookup,rescale{{per=row}},"
          "smem-stage,operand-loads,cache-hints")
PREFETCH = (f"thread-map{{elems-per-lane=4,window-split=4}},{_TAIL},"
            f"{DEFAULT_FETCH.replace('rescale,', 'rescale,l2-prefetch,')}")
CLUSTER = f"thread-map{{elems-per-lane=2,window-split=2,grid=tiled,cluster-split=2}},{_TAIL},{DEFAULT_FETCH}"
ROWS = (f"thread-map{{elems-per-lane=2}},{_TAIL},rows-in-flight{{rows=2}},page-lookup{{by=row}},"
        "rescale{per=row}")


def _window_ops(module) -> list[str]:
    names = [op.name for op in module.ops]
    return names[names.index("cc.window") + 1:names.index("cc.pool_softmax")]


def test_the_window_in_registers_and_staged() -> None:
    c4a = _lower(make_spec("c4a"))
    assert _window_ops(c4a) == ["kd.window_start", "kd.page_table", "kd.softmax_init", "kd.lane_pages",
                                "kd.window_chunks", "kd.load_batch", "kd.paged_row", "kd.end_loop",
                                "kd.online_update", "kd.end_loop"]
    row = c4a.find("kd.paged_row")
    assert (row.attr("page"), row.attr("cache_hint"), row.attr("streams"), row.attr("absent")) == (
        "lane", "stream", 2, True)
    assert c4a.find("kd.online_update").attr("rescale") == "batch"
    staged = _lower(make_spec("c4a"), STAGED)
    assert _window_ops(staged) == ["kd.window_start", "kd.softmax_init", "kd.smem_rows", "kd.online_row",
                                   "kd.end_loop"]
    issues = [(op.attr("row"), op.attr("slot")) for op in staged.iter("kd.stage_issue")]
    assert issues == [("first", 0), ("next", 1)] and staged.find("kd.staged_wait").attr("in_flight") == 1
    prefetch = _lower(make_spec("c128a_compress"), PREFETCH)
    assert prefetch.find("kd.l2_prefetch").attrs == (("rows", 32), ("row_bytes", 4096))
    ring = _lower(make_spec("c128a_compress", state_layout="ring"))
    assert "kd.ring_rows" in _window_ops(ring) and "kd.ring_row" in _window_ops(ring)


@pytest.mark.parametrize("spec,pipeline", [
    (make_spec("c4a"), "default"), (make_spec("c4a"), STAGED), (make_spec("c4a"), CLUSTER),
    (make_spec("c4a"), ROWS), (make_spec("c128a_compress"), PREFETCH),
    (make_spec("c128a_compress", state_layout="ring"), "default")], ids=["c4a", "staged", "cluster", "rows",
                                                                          "l2-prefetch", "ring"])
def test_the_window_ops_round_trip_and_emit_from_the_text(tmp_path: Path, spec, pipeline: str) -> None:
    lowered = _lower(spec, pipeline)
    parsed = parse_module(print_module(lowered))
    assert parsed == lowered
    assert emit(parsed, "p") == emit(lowered, "p")


def test_the_window_emitters_read_no_schedule() -> None:
    """Every fact the window's emitters print is an attribute of their op."""
    root = Path(__file__).parent.parent / "compressc" / "kernels"
    for name in ("row_ops_window.py", "window.py", "ring.py", "split_merge.py", "online.py", "prologue.py",
                 "stages_store.py", "row_ops_pool.py"):
        text = (root / name).read_text()
        assert "Schedule" not in text and ".get(" not in text, name


@pytest.mark.parametrize("pipeline,old,new,message", [
    ("default", 'rows = 8, absent = true, rescale = "batch"', 'rows = 8, absent = true, rescale = "row"',
     "kd.online_update: rescale='row': must be 'batch': the row's kd ops are lower-row's lowering of "
     "cc.window %win"),
    ("default", 'page = "lane", cache_hint = "stream"', 'page = "lane", cache_hint = "none"',
     "kd.paged_row: cache_hint='none': must be 'stream'"),
    (STAGED, 'kd.stage_issue {row = "next", slot = 1', 'kd.stage_issue {row = "next", slot = 0',
     "kd.stage_issue: program='kd.stage_issue': must be kd.stage_issue {'row': 'next', 'slot': 1"),
    (STAGED, "kd.staged_wait {in_flight = 1}", "kd.staged_wait {in_flight = 2}",
     "kd.staged_wait: program='kd.staged_wait': must be kd.staged_wait {'in_flight': 1}"),
], ids=["rescale", "cache-hint", "stage-slot", "wait-count"])
def test_the_verifier_names_an_edited_window_op(pipeline: str, old: str, new: str, message: str) -> None:
    with pytest.raises(VerifyError) as err:
        verify(_edit(_lower(make_spec("c4a"), pipeline), old, new))
    assert message in str(err.value)


# -- the interpreter runs the edited .cir (unverified): wrong bytes or a lane error ----------------
WRONG = [
    # absent rows (before position 0 at a sequence start) counted in the softmax
    ("default", 'rows = 8, absent = true, rescale = "batch"', 'rows = 8, absent = false, rescale = "batch"'),
    # lanes 4..7 never look up their rows' pages (page 0 instead)
    ("default", "kd.lane_pages {rows = 8", "kd.lane_pages {rows = 4"),
    # the second stream's rows read from the first head's channels
    ("default", "streams = 2, ratio = 4, head = 512, width = 1024, page",
     "streams = 1, ratio = 4, head = 512, width = 1024, page"),
    # the first row copied into slot 1, read back from slot 0 (NaN)
    (STAGED, 'kd.stage_issue {row = "first", slot = 0', 'kd.stage_issue {row = "first", slot = 1'),
    # every row read back from slot 0
    (STAGED, "slot_words = 8192}", "slot_words = 0}"),
    # the next row's window copied over this row's
    (STAGED, 'kd.stage_issue {row = "next", slot = 1', 'kd.stage_issue {row = "next", slot = 0'),
]


@pytest.mark.parametrize("pipeline,old,new", WRONG, ids=["absent", "lane-pages", "streams", "first-slot",
                                                          "read-slot", "next-slot"])
def test_an_edited_window_op_gives_wrong_bytes(monkeypatch, pipeline: str, old: str, new: str) -> None:
    spec = make_spec("c4a")
    lowered = _lower(spec, pipeline)
    assert _report(spec, lowered, "prefill", 200, 7).ok
    wrong = _edit(lowered, old, new)
    with pytest.raises(VerifyError):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    try:
        report = _report(spec, wrong, "prefill", 200, 7)
    except LaneError:
        return
    assert not report.ok


@pytest.mark.parametrize("old,new,message", [
    ("      kd.staged_wait {in_flight = 1}\n", "",
     "kd.smem_rows: reads smem words whose cp.async group was not waited for"),
    ("kd.staged_wait {in_flight = 1}", "kd.staged_wait {in_flight = 2}",
     "kd.smem_rows: reads smem words whose cp.async group was not waited for"),
], ids=["no-wait", "wait-2"])
def test_a_staged_row_read_before_its_copies_land_is_a_lane_error(monkeypatch, old: str, new: str,
                                                                   message: str) -> None:
    spec = make_spec("c4a")
    wrong = _edit(_lower(spec, STAGED), old, new)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match=message):
        _report(spec, wrong, "prefill", 200, 7)


def test_a_load_wider_than_its_alignment_is_a_lane_error(monkeypatch) -> None:
    spec = make_spec("c4a")
    wrong = _edit(_lower(spec, ROWS), "kd.paged_row {elems = 2, vec = 2", "kd.paged_row {elems = 2, vec = 4")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    message = "kd.paged_row: a 128-bit load from fp32 element .*, not a multiple of 4"
    with pytest.raises(LaneError, match=message):
        _report(spec, wrong, "prefill", 200, 7)


# -- C128A's two kernels: the pooled rows stored, then loaded by the store kernel ----------------------
def test_the_pooled_rows_are_stored_and_loaded_by_kd_ops(monkeypatch) -> None:
    from test_interp import _assert_pooled_close

    from compressc.ir.interp import args_from_scenario, run_module
    from compressc.scenarios import make_scenario

    compress, store = _lower(make_spec("c128a_compress")), _lower(make_spec("c128a_store"))
    rows = compress.find("kd.store_rows")
    assert rows.attrs == (("elems", 8), ("head", 512), ("bits", 128), ("keep", True))
    names = [op.name for op in store.ops]
    assert names[names.index("cc.load_rows") + 1:][:2] == ["kd.wait_prior_grid", "kd.load_rows"]
    with pytest.raises(VerifyError, match="kd.store_rows: keep=False: must be True"):
        verify(_edit(compress, "bits = 128, keep = true}", "bits = 128, keep = false}"))
    spec = make_spec("c128a_compress")
    sc = make_scenario(spec, "prefill", 300, seed=3)
    wrong = _edit(compress, "kd.store_rows {elems = 8, head = 512", "kd.store_rows {elems = 8, head = 256")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    out = sc.poisoned_compressed_kv()
    run_module(compress, args_from_scenario(sc, out))
    _assert_pooled_close(out, sc.run_reference(), sc)
    out = sc.poisoned_compressed_kv()
    run_module(wrong, args_from_scenario(sc, out))  # every row lands half a row down: a wrong row
    with pytest.raises(AssertionError):
        _assert_pooled_close(out, sc.run_reference(), sc)
    # rows 510 fp32 apart: a 128-bit load of an odd row is misaligned
    misaligned = _edit(store, "kd.load_rows {elems = 8, head = 512", "kd.load_rows {elems = 8, head = 510")
    sc = make_scenario(make_spec("c128a_store"), "prefill", 300, seed=3)
    with pytest.raises(LaneError, match="kd.load_rows: a 128-bit access at fp32 element .*, not a multiple"):
        run_module(misaligned, args_from_scenario(sc, sc.poisoned_cache()))
