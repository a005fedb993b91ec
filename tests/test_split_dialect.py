"""c128a_split's rank and merge as kernel-dialect ops (docs/kernels.md §13, lower-row and lower-grid).

- the prologue names the CTA's rank among the row's S blocks (`kd.split_rank {ctas}`); the
  merge is `kd.publish_partial`, `kd.arrive_last`, `kd.if_last` .. `kd.end_if` around the
  last CTA's loads, fold and hand-over; they print, parse and re-emit the same kernel;
- the verifier refuses an edit; run unverified, the interpreter (the workspace, the arrival
  count, the smem hand-over) gives wrong bytes or fails the election.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from lowering import edit as _edit
from test_c128a_split import WINDOW, _interpret, _lower

from compressc.acceptance import compare_cache_bytes
from compressc.ir import interp, parse_module, print_module
from compressc.ir.interp_row import LaneError
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.scenarios import make_scenario
from compressc.specs import make_spec

WIDE = f"thread-map{{elems-per-lane=2,window-split=4,grid-split=2}},{WINDOW}"  # 1024 threads, head 512
# a thread's channels are its lane's
LANES = f"thread-map{{elems-per-lane=4,window-split=1,grid-split=8}},{WINDOW}"


def _report(module, seed: int = 5):
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "mixed", 120, seed=seed)
    got, want = _interpret(module, sc, spec), sc.run_reference()
    n = min(sc.T, sc.kv_slot_mapping.numel())
    return compare_cache_bytes(spec, got, want, sc.kv_slot_mapping[:n][sc.active()[:n]],
                               kv_cache_block_size=sc.kv_cache_block_size)


def _merge_ops(module) -> list[str]:
    names = [op.name for op in module.ops]
    return names[names.index("kd.fold_groups") + 1:names.index("kd.pooled")]


def test_the_rank_and_the_merge_are_kd_ops() -> None:
    module = _lower(make_spec("c128a_split"))
    assert module.find("kd.split_rank").attrs == (("ctas", 8),)
    assert _merge_ops(module) == ["kd.publish_partial", "kd.arrive_last", "kd.if_last", "kd.split_lanes",
                                  "kd.load_partials", "kd.fold_partials", "kd.merged_to_smem",
                                  "kd.lanes_from_smem", "kd.end_if"]
    wide = _lower(make_spec("c128a_split"), WIDE)
    assert wide.find("kd.if_tidx").attr("below") == 512
    lanes = _lower(make_spec("c128a_split"), LANES)
    assert lanes.find("kd.merged_to_lanes") is not None
    assert not lanes.find("kd.publish_partial").attr("group0")


@pytest.mark.parametrize("pipeline", ["default", WIDE, LANES], ids=["default", "wide", "lanes"])
def test_the_merge_round_trips_and_emits_from_text(pipeline: str) -> None:
    module = _lower(make_spec("c128a_split"), pipeline)
    parsed = parse_module(print_module(module))
    assert parsed == module and emit(parsed, "p") == emit(module, "p")


@pytest.mark.parametrize("pipeline", ["default", WIDE, LANES], ids=["default", "wide", "lanes"])
def test_the_merge_matches_the_reference(pipeline: str) -> None:
    assert _report(_lower(make_spec("c128a_split"), pipeline)).ok


def test_a_hand_over_outside_the_tidx_guard_is_a_race(monkeypatch) -> None:
    """1024 threads for head 512: were the threads past the head (they fold nothing) to store their
    qL too, at sBuf[mcol], mcol = 512 .. 1023, they would hit the words where threads 0 .. 511
    store their qA (the race 7fc6a9d fixed in the emitter; the interpreter finds it)."""
    module = _lower(make_spec("c128a_split"), WIDE)
    ops = list(module.ops)
    at = next(i for i, op in enumerate(ops) if op.name == "kd.merged_to_smem")
    ops.insert(at + 2, ops.pop(at))  # past the kd.end_if of kd.if_tidx
    wrong = replace(module, ops=tuple(ops))
    with pytest.raises(VerifyError):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match="kd.merged_to_smem: threads store smem word 512 twice"):
        _report(wrong)


def test_the_verifier_names_an_edited_rank_or_merge_op() -> None:
    module = _lower(make_spec("c128a_split"))
    with pytest.raises(VerifyError, match=r"kd.split_rank: program='kd.split_rank': must be kd.split_rank "
                                          r"\{'ctas': 8\}"):
        verify(_edit(module, "kd.split_rank {ctas = 8}", "kd.split_rank {ctas = 4}"))
    with pytest.raises(VerifyError, match="kd.fold_partials: ctas=7: must be 8"):
        verify(_edit(module, "kd.fold_partials {me = 2, ctas = 8}", "kd.fold_partials {me = 2, ctas = 7}"))


WRONG = [
    # every split group stores its partial, not just group 0: group 1's overwrite them
    ("default", "elems = 4, bits = 128, row_bytes = 49168, group0 = true", "elems = 4, bits = 128, "
     "row_bytes = 49168, group0 = false"),
    # the fold leaves the last rank out
    ("default", "kd.fold_partials {me = 2, ctas = 8}", "kd.fold_partials {me = 2, ctas = 7}"),
    # rank 3's partial read in rank 2's place (the head's stride halved)
    ("default", "kd.load_partials {head = 512", "kd.load_partials {head = 256"),
    # the merged weighted sums read back from the merged sums' slots
    ("default", "kd.lanes_from_smem {elems = 4, slot = 0, head = 512}",
     "kd.lanes_from_smem {elems = 4, slot = 0, head = 0}"),
    # the merged partials handed straight to lanes whose channels are not the thread's
    ("default", "kd.merged_to_smem {me = 2, slot = 0, head = 512}", "kd.merged_to_lanes {me = 2}"),
]


@pytest.mark.parametrize("pipeline,old,new", WRONG, ids=["group0", "ranks", "stride", "handover", "to-lanes"])
def test_an_edited_merge_gives_wrong_bytes(monkeypatch, pipeline: str, old: str, new: str) -> None:
    wrong = _edit(_lower(make_spec("c128a_split"), pipeline), old, new)
    with pytest.raises(VerifyError):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    try:
        report = _report(wrong)
    except LaneError:  # a race in the hand-over, or a thread's channels that are not its lane's
        return
    assert not report.ok


def test_a_wrong_arrival_limit_fails_the_election(monkeypatch) -> None:
    """atom.inc wrapping at 3 instead of 7: two CTAs of the 8 see their count reach the limit."""
    wrong = _edit(_lower(make_spec("c128a_split")), "kd.arrive_last {ctas = 8", "kd.arrive_last {ctas = 4")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match=r"elected \[.*, .*\] \(exactly one CTA must finish the row\)"):
        _report(wrong)


def test_a_wrong_split_rank_count_fails_the_election(monkeypatch) -> None:
    """kd.split_rank's `ctas` is how many CTAs the interpreter runs the row on: 4 of the 8 arrive,
    none sees the count reach 7, and no CTA finishes the row."""
    wrong = _edit(_lower(make_spec("c128a_split")), "kd.split_rank {ctas = 8}", "kd.split_rank {ctas = 4}")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match=r"elected \[\] \(exactly one CTA must finish the row\)"):
        _report(wrong)
