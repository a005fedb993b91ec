"""The row body as lane-level kernel-dialect ops (lower-row, docs/pipeline.md §8).

- lower-row writes the kd ops after each epilogue row op; they print, parse and re-emit;
- the verifier refuses an edited mask, slot or byte offset naming the op and attribute;
- the interpreter executes them at lane level: a lowered `.cir` edited that way (a wrong
  shuffle mask, smem slot or word offset, a missing barrier) gives bytes the reference
  refuses, or a lane error, when the interpreter runs it unverified.
"""

from __future__ import annotations

import pytest
from lowering import edit as _edit
from lowering import lower as _lower
from test_interp import _report

from compressc.ir import interp, parse_module, print_module
from compressc.ir.interp_row import LaneError
from compressc.ir.kd_row import ROW_ATTRS, RowNestingError, row_program
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.passes.manager import DEFAULT_FETCH
from compressc.specs import make_spec


def _names(module) -> list[str]:
    return [op.name for op in module.ops if op.name in ROW_ATTRS]


def test_lower_row_writes_each_epilogue_op_lane_by_lane() -> None:
    names = _names(_lower(make_spec("c4a")))
    names = names[names.index("kd.pooled"):]  # the window's ops first (tests/test_window_dialect.py)
    assert names[:6] == ["kd.pooled", "kd.sum_squares", "kd.lane_sum", "kd.smem_put", "kd.cta_barrier",
                         "kd.smem_sum"]
    assert {"kd.lane_max", "kd.ue8m0_scale", "kd.e4m3_words", "kd.bf16_words", "kd.store_pads"} <= set(names)
    rotated = _names(_lower(make_spec("indexer_mxfp4", rotate=True)))
    assert rotated.count("kd.shfl_butterfly") == 5 and "kd.e2m1_words" in rotated
    # a quant block over 3 warps: each warp's max through smem, after the RMS partials' slots
    wide = _lower(make_spec("indexer_fp8", 384))
    put = [op for op in wide.ops if op.name == "kd.smem_put"]
    assert [(op.attr("value"), op.attr("slot"), op.attr("span")) for op in put] == [
        ("ssq", 0, "head"), ("amax", 4, "block")]


@pytest.mark.parametrize("variant", [("c4a", 512, {}), ("indexer_mxfp4", 128, {"rotate": True}),
                                     ("c128a_store", 512, {}), ("indexer_fp8", 384, {})])
def test_the_row_ops_round_trip_and_emit_the_same_source(variant) -> None:
    kernel, head, extra = variant
    lowered = _lower(make_spec(kernel, head, **extra))
    parsed = parse_module(print_module(lowered))
    assert parsed == lowered and _names(parsed)
    assert emit(parsed, "p") == emit(lowered, "p")


@pytest.mark.parametrize("old,new,message", [
    ("masks = (16, 8, 4, 2, 1)}", "masks = (16, 8, 4, 2, 2)}",
     "kd.lane_sum: masks=(16, 8, 4, 2, 2): must be (16, 8, 4, 2, 1): the row's kd ops are lower-row's "
     "lowering of cc.rms_norm %y"),
    ("kd.smem_sum {value = \"ssq\", slot = 0", "kd.smem_sum {value = \"ssq\", slot = 1",
     "kd.smem_sum: slot=1: must be 0"),
    ("code_bits = 8, bits = 64, offsets = (0)", "code_bits = 8, bits = 64, offsets = (2)",
     "kd.store_words: offsets=(2,): must be (0,)"),
    ("  kd.cta_barrier\n", "", "kd.smem_sum: name='kd.smem_sum': must be kd.cta_barrier"),
])
def test_the_verifier_names_an_edited_row_op_and_attribute(old: str, new: str, message: str) -> None:
    with pytest.raises(VerifyError) as err:
        verify(_edit(_lower(make_spec("c4a")), old, new))
    assert message in str(err.value)


def test_a_coarse_op_edited_without_relowering_is_refused() -> None:
    edited = _edit(_lower(make_spec("c4a")), "lane_tree = (16, 8, 4, 2, 1)", "lane_tree = (1, 2, 4, 8, 16)")
    rule = r"kd.lane_sum: masks=.*must be \(1, 2, 4, 8, 16\).*re-run lower-row"
    with pytest.raises(VerifyError, match=rule):
        verify(edited)


def test_a_store_region_that_never_closes_is_a_nesting_error() -> None:
    lowered = _lower(make_spec("c4a"))
    ops = tuple(op for op in lowered.ops if op.name != "kd.end_cols")
    with pytest.raises(RowNestingError, match="kd.if_cols: its store region is never closed"):
        row_program(ops)
    with pytest.raises(VerifyError, match="never closed with kd.end_cols"):
        verify(parse_module(print_module(lowered).replace("  kd.end_cols\n", "", 1)))


# -- the interpreter runs the edited .cir (unverified) and the bytes go wrong --------------------
CASES = [
    # a shuffle tree with a repeated mask: the RMS sum misses half the lanes
    ("c4a", 512, "masks = (16, 8, 4, 2, 1)}", "masks = (16, 8, 4, 2, 2)}"),
    # the quant group's absmax tree stops a level early: scales from half a block
    ("c4a", 512, "masks = (4, 2, 1), lanes = 8", "masks = (4, 2), lanes = 8"),
    # the cross-warp sum reads one of the 2 warps' partials
    ("c4a", 512, "slot = 0, warps = 2}", "slot = 0, warps = 1}"),
    # the block's warps' maxima read from the RMS partials' slots instead of their own
    ("indexer_fp8", 384, "smem_max {value = \"amax\", slot = 4", "smem_max {value = \"amax\", slot = 0"),
    # the partials written one slot up, read where they should be (a never-written NaN slot)
    ("c4a", 384, "kd.smem_put {value = \"ssq\", slot = 0", "kd.smem_put {value = \"ssq\", slot = 1"),
    # the codes stored 8 bytes on
    ("c4a", 512, "code_bits = 8, bits = 64, offsets = (0)", "code_bits = 8, bits = 64, offsets = (8)"),
    # the bf16 rope region written into the codes
    ("c4a", 512, "offset = 448, lo = 448, code_bits = 16", "offset = 440, lo = 448, code_bits = 16"),
    # the scale bytes one on, over the pad
    ("c4a", 512, "lanes = 8, lo = 0, block = 64, first = 0", "lanes = 8, lo = 0, block = 64, first = 1"),
    # a rotation butterfly over the wrong lanes
    ("indexer_mxfp4", 128, "shfl_butterfly {mask = 4, span = 16", "shfl_butterfly {mask = 2, span = 16"),
]


@pytest.mark.parametrize("kernel,head,old,new", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_an_edited_row_op_gives_wrong_bytes(monkeypatch, kernel: str, head: int, old: str, new: str) -> None:
    spec = make_spec(kernel, head, rotate=kernel == "indexer_mxfp4")
    lowered = _lower(spec)
    assert _report(spec, lowered, "mixed", 12, 3).ok
    wrong = _edit(lowered, old, new)
    with pytest.raises(VerifyError):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    assert not _report(spec, wrong, "mixed", 12, 3).ok


def test_an_smem_read_before_its_barrier_is_a_lane_error(monkeypatch) -> None:
    spec = make_spec("c4a")
    wrong = _edit(_lower(spec), "  kd.cta_barrier\n", "")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match="kd.smem_sum: reads smem slot 0 before a barrier publishes it"):
        _report(spec, wrong, "mixed", 12, 3)


def test_a_slot_past_the_static_smem_is_a_lane_error(monkeypatch) -> None:
    spec = make_spec("c4a")
    wrong = _edit(_lower(spec), "slot = 0, warps = 2}", "slot = 3, warps = 2}")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match="kd.smem_sum: slot 3 reaches fp32 word 4, past the CTA's 16 bytes"):
        _report(spec, wrong, "mixed", 12, 3)


# -- the pooling merge: split groups through smem, a cluster's ranks through rank 0's --------------
_TAIL = "vectorize,lower-reduction,plan-smem," + DEFAULT_FETCH
SPLIT = f"thread-map{{elems-per-lane=4,window-split=2}},{_TAIL}"
CLUSTER = f"thread-map{{elems-per-lane=2,window-split=2,grid=tiled,cluster-split=2}},{_TAIL}"
POOL_CASES = [
    # group 0 reads the partial sums from the maxima's slots
    (SPLIT, "groups = 2}", "kd.fold_groups {head = 512, elems = 4, slot = 0, stride = 1024",
     "kd.fold_groups {head = 512, elems = 4, slot = 0, stride = 512"),
    # rank 0 folds rank 1's partial from a slot one channel off
    (CLUSTER, "ranks = 2, absent", "kd.fold_ranks {head = 512, elems = 2, slot = 0",
     "kd.fold_ranks {head = 512, elems = 2, slot = 1"),
    # rank 1 stores its weighted sums over its sums
    (CLUSTER, "group0 = true}", "kd.dsmem_put_partials {head = 512, elems = 2, slot = 0, stride = 1024",
     "kd.dsmem_put_partials {head = 512, elems = 2, slot = 0, stride = 512"),
]


@pytest.mark.parametrize("pipeline,_,old,new", POOL_CASES, ids=["split-stride", "rank-slot", "dsmem-stride"])
def test_an_edited_pool_merge_gives_wrong_bytes(monkeypatch, pipeline: str, _, old: str, new: str) -> None:
    spec = make_spec("c4a")
    lowered = _lower(spec, pipeline)
    assert _report(spec, lowered, "prefill", 40, 5).ok
    wrong = _edit(lowered, old, new)
    with pytest.raises(VerifyError, match="must be"):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    assert not _report(spec, wrong, "prefill", 40, 5).ok


def test_a_wrong_cluster_rank_count_gives_wrong_bytes(monkeypatch) -> None:
    """kd.cluster_rank's `ctas` is how many CTAs the interpreter runs the row on: a cluster of 2
    lowered as 1 pools only rank 0's half of the window and folds a partial no rank stored."""
    spec = make_spec("c4a")
    wrong = _edit(_lower(spec, CLUSTER), "kd.cluster_rank {ctas = 2}", "kd.cluster_rank {ctas = 1}")
    with pytest.raises(VerifyError, match="must be kd.cluster_rank {'ctas': 2}"):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    assert not _report(spec, wrong, "prefill", 40, 5).ok


def test_a_cluster_merge_without_its_barrier_is_a_lane_error(monkeypatch) -> None:
    spec = make_spec("c4a")
    wrong = _edit(_lower(spec, CLUSTER), '  kd.cluster_barrier {after = "stores", ranks = 2}\n', "")
    monkeypatch.setattr(interp, "verify", lambda module: module)
    with pytest.raises(LaneError, match="kd.fold_ranks: reads smem slot 0 before a barrier publishes it"):
        _report(spec, wrong, "prefill", 40, 5)
