"""c128a_split's cluster merge on the CPU (docs/kernels.md §13, `thread-map{cluster-split=S}`): the
row's S CTAs are one thread-block cluster, ranks 1..S-1 store their partials into rank 0's smem
over DSMEM and rank 0 folds them in rank order and stores the row; no workspace, no counter.

- every cluster split x window split through the interpreter against the reference, and the
  same bytes as the global merge of the same lanes;
- the kd ops are the pair's cluster merge (`kd.cluster_rank`, `kd.cluster_barrier`,
  `kd.dsmem_put_partials`, `kd.fold_ranks`, `kd.only_rank0`), printed, parsed and emitted;
  the emitted kernel has the cluster ops and none of the workspace's;
- the launch rule `wave:N,cluster:S`, the pass's refusals, edits the verifier and the
  interpreter catch, the tune candidates, and (with nvidia-cutlass-dsl) a cubin without spills.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
from lowering import edit as _edit
from test_c128a_split import WINDOW, _lower

from compressc.acceptance import compare_cache_bytes
from compressc.ir import interp, parse_module, print_module
from compressc.ir.interp import args_from_scenario, run_module
from compressc.ir.interp_row import LaneError
from compressc.ir.launch import grid_rule
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.passes.manager import DEFAULT_FETCH, PipelineError
from compressc.scenarios import make_scenario
from compressc.specs import make_spec
from compressc.specs.launch import GridRule, launch_grid
from compressc.tune.candidates import NO_OCCUPANCY, TAIL, candidates


def _cluster(s: int, e: int = 4, w: int = 2, fetch: str = WINDOW) -> str:
    return f"thread-map{{elems-per-lane={e},window-split={w},cluster-split={s}}},{fetch}"


def _global(s: int, e: int = 4, w: int = 2) -> str:
    return f"thread-map{{elems-per-lane={e},window-split={w},grid-split={s}}},{WINDOW}"


CLUSTER8 = _cluster(8)
# (elems per lane, window split, cluster split): S = 2, 4, 8 and the window splits the tuner tries
SPLITS = [(4, 2, 8), (4, 1, 8), (4, 4, 8), (2, 2, 8), (8, 4, 8), (4, 2, 4), (4, 1, 4), (2, 1, 4), (4, 2, 2),
          (4, 4, 2)]
CASES = [("decode", 4), ("prefill", 300), ("mixed", 300)]


def _run(module, sc):
    """The interpreted cache and the workspace the kernel was given."""
    out = sc.poisoned_cache()
    args = args_from_scenario(sc, out)
    run_module(module, args)
    return out, args["split_workspace"]


def _report(spec, sc, got):
    n = min(sc.T, sc.kv_slot_mapping.numel())
    return compare_cache_bytes(spec, got, sc.run_reference(), sc.kv_slot_mapping[:n][sc.active()[:n]],
                               kv_cache_block_size=sc.kv_cache_block_size)


@pytest.mark.parametrize(("e", "w", "s"), SPLITS, ids=[f"e{e}-x{w}-cluster{s}" for e, w, s in SPLITS])
@pytest.mark.parametrize(("kind", "T"), CASES)
def test_every_cluster_split_matches_the_reference(e: int, w: int, s: int, kind: str, T: int) -> None:
    spec = make_spec("c128a_split", weight_dtype="f32" if s == 4 else "bf16")
    sc = make_scenario(spec, kind, T, seed=T + 10 * e + w + s)
    got, workspace = _run(_lower(spec, _cluster(s, e, w)), sc)
    assert _report(spec, sc, got).ok
    assert not workspace.any()  # no partial, no counter: the cluster merge never touches it


EDGES = [{"tiny_block": True}, {"short_positions": True}, {"nonboundary_kv": "none"}]


@pytest.mark.parametrize("extra", EDGES, ids=["tiny_block", "short_positions", "nonboundary_none"])
def test_cluster_edge_cases(extra: dict) -> None:
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "mixed", 300, seed=11, **extra)
    assert _report(spec, sc, _run(_lower(spec, CLUSTER8), sc)[0]).ok


@pytest.mark.parametrize(("e", "w", "s"), [(4, 2, 8), (4, 1, 4), (2, 2, 2)])
def test_the_cluster_merge_gives_the_global_merges_bytes(e: int, w: int, s: int) -> None:
    """Both fold rank 0's partial with ranks 1..S-1's in rank order with the same fold: the caches
    are equal byte for byte, not just within the reference's tolerance."""
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "mixed", 300, seed=s + e)
    by_cluster, _ = _run(_lower(spec, _cluster(s, e, w)), sc)
    by_workspace, _ = _run(_lower(spec, _global(s, e, w)), sc)
    assert torch.equal(by_cluster, by_workspace)


def _merge_ops(module) -> list[str]:
    names = [op.name for op in module.ops]
    return names[names.index("kd.fold_groups") + 1:]


@pytest.mark.parametrize("s", [2, 4, 8])
def test_the_cluster_schedule_is_the_pairs_cluster_merge(s: int) -> None:
    module = _lower(make_spec("c128a_split"), _cluster(s))
    assert module.get("cluster_split") == s and module.get("split_merge") is None
    assert module.get("min_ctas_per_sm") == 2  # as the global split: 32 rows x 8 CTAs in one wave
    assert module.find("kd.cluster_rank").attrs == (("ctas", s),)
    assert _merge_ops(module)[:7] == ["kd.cluster_barrier", "kd.dsmem_put_partials", "kd.cluster_barrier",
                                      "kd.fold_ranks", "kd.pooled", "kd.only_group0", "kd.only_rank0"]
    assert module.find("kd.fold_ranks").attr("ranks") == s and not module.find("kd.fold_ranks").attr("absent")
    for workspace_op in ("kd.split_rank", "kd.publish_partial", "kd.arrive_last", "kd.if_last",
                         "kd.load_partials", "kd.fold_partials", "kd.only_last"):
        assert module.find(workspace_op) is None, workspace_op
    assert grid_rule(module) == GridRule("wave", 8, cluster=s)
    assert grid_rule(module).spelling() == f"wave:8,cluster:{s}"
    # rank 0's smem holds ranks 1..S-1's partials (3 x 512 fp32 each), past the split groups'
    assert module.get("smem_bytes") >= 3 * 4 * 512 * (s - 1)


def test_without_the_occupancy_pass_no_hint() -> None:
    module = _lower(make_spec("c128a_split"), f"thread-map{{cluster-split=8}},{TAIL},{NO_OCCUPANCY}")
    assert module.get("cluster_split") == 8 and module.get("min_ctas_per_sm") is None


def test_the_emitted_kernel_merges_over_dsmem() -> None:
    source = emit(_lower(make_spec("c128a_split"), CLUSTER8), "p")
    launch, body = source.split("def kernel", 1)
    assert "cluster=[8, 1, 1]" in launch  # the cluster launch attribute
    assert "rank = cute.arch.block_idx_in_cluster()" in body
    assert body.count("ops.cluster_sync()") == 4  # two a row, in the one-row and the looping path
    assert "ops.st_dsmem_f32(" in body and "if rank == 0:" in body
    for workspace in ("split_workspace.toint()", "ops.arrive_count(", "ops.fence_gpu()", "ops.ld_l2(",
                      "bidx % 8", "if last:"):
        assert workspace not in body, workspace


@pytest.mark.parametrize("s", [8, 2])
def test_the_cluster_merge_round_trips_and_emits_from_text(s: int) -> None:
    module = _lower(make_spec("c128a_split"), _cluster(s))
    parsed = parse_module(print_module(module))
    assert parsed == module and emit(parsed, "p") == emit(module, "p")


def test_thread_map_refuses_bad_cluster_combinations() -> None:
    spec = make_spec("c128a_split")
    with pytest.raises(PipelineError, match=r"grid-split=8 and cluster-split=4 both split c128a_split's "
                                            r"window: keep one"):
        _lower(spec, f"thread-map{{grid-split=8,cluster-split=4}},{WINDOW}")
    with pytest.raises(PipelineError, match=r"cluster-split=8 needs the tiled grid; the grid here is 'rows' "
                                            r"\(use grid=tiled, or drop cluster-split\)"):
        _lower(spec, f"thread-map{{grid=rows,cluster-split=8}},{WINDOW}")
    with pytest.raises(PipelineError, match="cluster-split=3: must be one of 1, 2, 4, 8"):
        _lower(spec, f"thread-map{{cluster-split=3}},{WINDOW}")


def test_the_verifier_holds_the_merge_to_the_schedule() -> None:
    """A cluster module marked as the global merge (or the reverse) has the other merge's kd ops."""
    module = _lower(make_spec("c128a_split"), CLUSTER8)
    with pytest.raises(VerifyError, match="must be kd.split_rank"):
        verify(module.with_sched(split_merge="global"))
    with pytest.raises(VerifyError, match="kd.fold_ranks: ranks=7: must be 8"):
        verify(_edit(module, "stride = 3584, ranks = 8", "stride = 3584, ranks = 7"))


STORES = (("after", "stores"), ("ranks", 8))
WRONG = [
    # the fold leaves rank 7 out
    ("stride = 3584, ranks = 8", "stride = 3584, ranks = 7"),
    # every split group stores its partial into rank 0's smem: group 1's land over group 0's
    ("stride = 3584, group0 = true}", "stride = 3584, group0 = false}"),
]


@pytest.mark.parametrize(("old", "new"), WRONG, ids=["ranks", "group0"])
def test_an_edited_cluster_merge_gives_wrong_bytes(monkeypatch, old: str, new: str) -> None:
    spec = make_spec("c128a_split")
    wrong = _edit(_lower(spec, CLUSTER8), old, new)
    with pytest.raises(VerifyError):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    sc = make_scenario(spec, "mixed", 120, seed=5)
    assert not _report(spec, sc, _run(wrong, sc)[0]).ok


def test_rank_0_reading_before_the_second_cluster_barrier_is_caught(monkeypatch) -> None:
    """Without the barrier after the DSMEM stores rank 0 would fold partials not yet visible."""
    module = _lower(make_spec("c128a_split"), CLUSTER8)
    ops = list(module.ops)
    ops.pop(next(i for i, op in enumerate(ops) if op.attrs == STORES))
    wrong = replace(module, ops=tuple(ops))
    monkeypatch.setattr(interp, "verify", lambda module: module)
    sc = make_scenario(make_spec("c128a_split"), "decode", 2, seed=3)
    with pytest.raises(LaneError, match="kd.fold_ranks: reads smem slot 0 before a barrier publishes it"):
        _run(wrong, sc)


def test_the_cluster_launch_grid() -> None:
    rule = GridRule.parse("wave:8,cluster:8")
    assert rule == GridRule("wave", 8, cluster=8) and rule.ctas_per_row == 8 and rule.split == 1
    assert launch_grid(rule, 1, 132, resident=2, max_clusters=32) == 8  # one row: one cluster
    assert launch_grid(rule, 32, 132, resident=2, max_clusters=32) == 32 * 8  # a decode step: one wave
    # fewer co-resident clusters than rows (clusters live in one GPC): a cluster takes 2 rows
    assert launch_grid(rule, 32, 132, resident=2, max_clusters=16) == 16 * 8
    assert launch_grid(GridRule("wave", 8, cluster=4), 32, 132, resident=2, max_clusters=64) == 32 * 4


def test_the_tune_candidates_include_the_cluster_merge() -> None:
    found = candidates(make_spec("c128a_split"), "sm_90a", tuned={})
    clustered = {c.summary for c in found if "cluster" in c.summary}
    assert clustered == {"e4 x2 256t r8 tiled8 occ2 cluster8", "e4 x2 256t r8 tiled8 cluster8",
                         "e4 x2 256t r8 tiled8 occ2 cluster4", "e4 x2 256t r8 tiled8 cluster4"}
    assert any("grid-split=2" in c.pipeline for c in found)  # the list's last proposal still fits


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
@pytest.mark.parametrize("weight", ["bf16", "f32"])
def test_the_cluster_merge_builds_without_spills(tmp_path, weight: str) -> None:
    """sm_90a: 2 CTAs of 256 threads an SM leave 128 registers a thread; the candidate fits them."""
    from compressc.cache.store import Entry, Store
    from compressc.driver.build import build_plans
    from compressc.driver.plan import plan

    pipeline = f"thread-map{{cluster-split=8}},{TAIL},{DEFAULT_FETCH}"  # the tune candidate
    built = plan(make_spec("c128a_split", weight_dtype=weight), "sm90", pipeline)
    entry = build_plans([built], Store(tmp_path), workers=1)[built.key]
    assert isinstance(entry, Entry), entry
    manifest = entry.manifest
    assert manifest["grid"] == "wave:8,cluster:8"
    assert manifest["spill_loads"] == manifest["spill_stores"] == 0 and manifest["stack"] == 0
    assert manifest["registers"] <= 128 and manifest["smem_static"] <= 48 * 1024
