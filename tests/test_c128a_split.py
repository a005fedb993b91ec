"""c128a_split, C128A in one launch at small T (docs/kernels.md §13), on the CPU: its schedules
through the interpreter against the reference, its launch rule, the emitted merge, and the
runtime's choice between it and the two-kernel pair."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from compressc.acceptance import compare_cache_bytes
from compressc.config import Config, ConfigError
from compressc.ir.from_spec import module_from_spec
from compressc.ir.interp import args_from_scenario, run_module
from compressc.ir.interp_row import LaneError
from compressc.kernels.emitter import emit
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline
from compressc.passes.manager import PipelineError
from compressc.runtime import c128a_split, ops
from compressc.scenarios import make_scenario
from compressc.specs import make_spec
from compressc.specs.abi import split_workspace_row
from compressc.specs.launch import GridRule, launch_grid
from compressc.tune.candidates import candidates
from tests.test_runtime_ops import launches, make_args  # noqa: F401 (the fixture)

WINDOW = ("vectorize,lower-reduction,plan-smem,rows-in-flight,page-lookup,rescale,operand-loads,occupancy,"
          "cache-hints")


def _lower(spec, pipeline: str = "default"):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


def _interpret(module, sc, spec):
    out = sc.poisoned_cache()
    args = args_from_scenario(sc, out)
    run_module(module, args)
    # every row's arrival counter is back at 0 (the workspace is ready for the next launch)
    assert not args["split_workspace"][::split_workspace_row(spec.head)].view(np.uint32).any()
    return out


# every grid split and window split the tuner may pick, e4 and e8 lanes
SCHEDULES = [f"thread-map{{elems-per-lane={e},window-split={w},grid-split={s}}},{WINDOW}"
             for e, w, s in ((4, 2, 8), (4, 1, 8), (4, 2, 4), (8, 4, 8), (4, 4, 2), (4, 2, 1), (2, 1, 8))]


@pytest.mark.parametrize("pipeline", SCHEDULES)
@pytest.mark.parametrize(("kind", "T"), [("decode", 4), ("prefill", 300), ("mixed", 300)])
def test_every_split_matches_the_reference(pipeline: str, kind: str, T: int) -> None:
    spec = make_spec("c128a_split", weight_dtype="f32" if "grid-split=4" in pipeline else "bf16")
    sc = make_scenario(spec, kind, T, seed=T + len(pipeline))
    got, want = _interpret(_lower(spec, pipeline), sc, spec), sc.run_reference()
    n = min(sc.T, sc.kv_slot_mapping.numel())
    slots = sc.kv_slot_mapping[:n][sc.active()[:n]]
    report = compare_cache_bytes(spec, got, want, slots, kv_cache_block_size=sc.kv_cache_block_size)
    assert report.ok, report


EDGES = [{"tiny_block": True}, {"short_positions": True}, {"nonboundary_kv": "none"}]


@pytest.mark.parametrize("extra", EDGES)
def test_default_split_edge_cases(extra: dict) -> None:
    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "mixed", 300, seed=7, **extra)
    got, want = _interpret(_lower(spec), sc, spec), sc.run_reference()
    n = min(sc.T, sc.kv_slot_mapping.numel())
    report = compare_cache_bytes(spec, got, want, sc.kv_slot_mapping[:n][sc.active()[:n]],
                                 kv_cache_block_size=sc.kv_cache_block_size)
    assert report.ok, report


def test_the_default_schedule_splits_over_8_ctas_with_a_global_merge() -> None:
    module = _lower(make_spec("c128a_split"))
    assert module.get("cluster_split") == 8 and module.get("split_merge") == "global"
    assert (module.get("elems_per_lane"), module.get("window_split"), module.get("threads")) == (4, 2, 256)
    assert module.get("min_ctas_per_sm") == 2  # occupancy: a decode step's 32 rows x 8 CTAs in one wave
    source = emit(module, "default")
    assert "rank = bidx % 8" in source
    assert "ops.arrive_count(ws_row, 7)" in source and "ops.fence_gpu()" in source
    assert "ops.ld_l2(" in source and "if last:" in source
    assert "cluster" not in source.split("def kernel", 1)[0].split("launch(", 1)[-1]  # a plain launch


def test_thread_map_refuses_the_wrong_split() -> None:
    with pytest.raises(PipelineError, match="grid-split=8 is c128a_split's"):
        _lower(make_spec("c4a"), f"thread-map{{grid-split=8}},{WINDOW}")
    with pytest.raises(PipelineError, match="grid-split=4 and cluster-split=4 both split"):
        _lower(make_spec("c128a_split"), f"thread-map{{grid-split=4,cluster-split=4}},{WINDOW}")
    with pytest.raises(PipelineError, match="grid-split=3: must be one of 1, 2, 4, 8"):
        _lower(make_spec("c128a_split"), f"thread-map{{grid-split=3}},{WINDOW}")


def test_the_split_launch_rule() -> None:
    rule = GridRule.parse("wave:8,split:8")
    assert rule == GridRule("wave", 8, split=8) and rule.spelling() == "wave:8,split:8"
    assert rule.cluster == 1 and rule.ctas_per_row == 8
    assert launch_grid(rule, 1, 132, resident=1) == 8  # one row: 8 CTAs
    assert launch_grid(rule, 32, 132, resident=1) == 16 * 8  # one wave: 16 row groups of 2 rows
    assert launch_grid(rule, 32, 132, resident=2) == 32 * 8  # 33 groups fit: one row each
    assert launch_grid(rule, 512, 132, resident=1) == 16 * 8  # 132 / 8 rows a wave: 16 of 32 rows each
    with pytest.raises(ValueError, match="no cluster"):
        GridRule("wave", 8, cluster=2, split=2)


def test_the_workspace_is_zeroed_grown_and_reserved(monkeypatch) -> None:
    monkeypatch.setattr(c128a_split, "_WORKSPACE", {})
    cpu = torch.device("cpu")
    a = c128a_split.split_workspace(cpu, 2, 512)
    assert a.shape == (2, split_workspace_row(512)) and bool((a == 0).all())
    assert c128a_split.split_workspace(cpu, 1, 512, capturing=True).data_ptr() == a.data_ptr()
    with pytest.raises(RuntimeError, match=r"reserve_c128a_scratch\(9, 512, device\)"):
        c128a_split.split_workspace(cpu, 9, 512, capturing=True)
    ops.reserve_c128a_scratch(9, 512, "cpu")
    assert c128a_split.split_workspace(cpu, 9, 512, capturing=True).shape[0] == 9


def test_the_threshold_is_read_from_the_environment() -> None:
    assert Config.from_env({}).c128a_split_rows is None
    assert Config.from_env({"COMPRESSC_C128A_SPLIT_ROWS": "64"}).c128a_split_rows == 64
    with pytest.raises(ConfigError, match="COMPRESSC_C128A_SPLIT_ROWS='x'"):
        Config.from_env({"COMPRESSC_C128A_SPLIT_ROWS": "x"})
    assert c128a_split.SPLIT_MAX_ROWS == 32


@pytest.mark.parametrize("rows", [1, 8, 32])
def test_small_t_takes_one_launch(launches, monkeypatch, rows: int) -> None:  # noqa: F811
    monkeypatch.setattr(ops, "workspace_pointer", lambda device, T, head: 0x1000 + T)
    args = make_args("c128a", rows=rows)
    ops.compress_c128a(**args)
    ((variant, grid, v),) = launches
    assert variant == "c128a_split_h512_q64_r64_bf16" and grid == rows
    assert v["split_workspace"] == 0x1000 + rows and v["num_rows"] == rows
    assert v["state_block_shift"] == 3 and v["kv_block_shift"] == 1 and v["k_cache_page_stride"] == 1168
    assert v["state_cache"] == args["state_cache"].data_ptr() and v["k_cache"] == args["k_cache"].data_ptr()
    ops.compress_c128a(**args)  # the signature-cache hit packs the same values
    assert launches[1][2] == v


@pytest.mark.parametrize("why", ["large_t", "limit_0", "compressed_kv", "full_bf16"])
def test_otherwise_the_pair(launches, monkeypatch, why: str) -> None:  # noqa: F811
    monkeypatch.setattr(ops, "workspace_pointer", lambda device, T, head: 0x1000)
    args = make_args("c128a", rows=33 if why == "large_t" else 4)
    extra: dict = {}
    if why == "limit_0":
        monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 0)
    if why == "compressed_kv":
        extra["compressed_kv"] = torch.zeros(4, 512)
    if why == "full_bf16":
        assert not c128a_split.takes_split(4, "full_bf16", None, False)
        assert not c128a_split.takes_split(4, "fp8_ds_mla", None, False, (384, 64))
        assert c128a_split.takes_split(4, "fp8_ds_mla", None, False, (512, 64))
        return
    monkeypatch.setattr(ops, "scratch_buffer", lambda device, rows, head: torch.zeros(rows, head))
    ops.compress_c128a(**args, **extra)
    assert [name for name, _, _ in launches] == ["c128a_compress_h512_q64_r64_f32",
                                                 "c128a_store_h512_q64_r64_bf16"]


def test_the_verifier_checks_the_global_merge() -> None:
    from compressc.ir.verifier import VerifyError, verify

    module = _lower(make_spec("c128a_split"))
    with pytest.raises(VerifyError, match="split_merge='dsmem': must be 'global'"):
        verify(module.with_sched(split_merge="dsmem"))
    with pytest.raises(VerifyError, match="split_merge='global': needs cluster_split > 1"):
        verify(module.with_sched(cluster_split=1))
    # unset split_merge is the cluster merge (tests/test_c128a_split_cluster.py): not these kd ops
    with pytest.raises(VerifyError, match="kd.split_rank: program='kd.split_rank': must be kd.cluster_rank"):
        verify(module.with_sched(split_merge=None))
    c4a = _lower(make_spec("c128a_compress", weight_dtype="f32"), f"thread-map{{cluster-split=2}},{WINDOW}")
    with pytest.raises(VerifyError, match="is c128a_split's"):
        verify(c4a.with_sched(split_merge="global"))


def test_the_interpreter_catches_a_wrong_election(monkeypatch) -> None:
    from compressc.ir import interp_split

    spec = make_spec("c128a_split")
    sc = make_scenario(spec, "decode", 2, seed=3)
    # a rank that never arrives: nobody sees the count reach S - 1, so nobody stores the row
    monkeypatch.setattr(interp_split, "arrival_order", lambda row, ctas: list(range(ctas - 1)))
    with pytest.raises(LaneError, match="elected"):
        _interpret(_lower(spec), sc, spec)


# every schedule `compressc tune` builds for c128a_split (tune/candidates.py split_proposals)
TUNE_CANDIDATES = [(weight, c) for weight in ("bf16", "f32")
                   for c in candidates(make_spec("c128a_split", weight_dtype=weight), "sm_90a", tuned={})]


@pytest.mark.parametrize(("weight", "cand"), TUNE_CANDIDATES,
                         ids=[f"{w}-{c.summary.replace(' ', '-')}" for w, c in TUNE_CANDIDATES])
@pytest.mark.parametrize(("kind", "T"), [("decode", 4), ("prefill", 300), ("mixed", 300)])
def test_every_tune_candidate_matches_the_reference(weight: str, cand, kind: str, T: int) -> None:
    spec = make_spec("c128a_split", weight_dtype=weight)
    sc = make_scenario(spec, kind, T, seed=T + len(cand.pipeline))
    got, want = _interpret(_lower(spec, cand.pipeline), sc, spec), sc.run_reference()
    n = min(sc.T, sc.kv_slot_mapping.numel())
    slots = sc.kv_slot_mapping[:n][sc.active()[:n]]
    report = compare_cache_bytes(spec, got, want, slots, kv_cache_block_size=sc.kv_cache_block_size)
    assert report.ok, report


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
def test_a_cta_wider_than_the_head_builds_its_merge(tmp_path) -> None:
    """1024 threads (2 channels a lane, window split 4): the fold's threads past the head's 512
    channels skip it, and its values are used inside the same `if` (they were not, and CuTe DSL
    refused the module: NameError 'qL')."""
    from compressc.cache.store import Entry, Store
    from compressc.driver.build import build_plans
    from compressc.driver.plan import plan

    # without occupancy: 2 CTAs of 1024 threads leave 32 registers a thread, and it spills
    lanes = "thread-map{elems-per-lane=2,window-split=4,grid-split=8}"
    pipeline = f"{lanes},{WINDOW.replace('occupancy,', '')}"
    module = _lower(make_spec("c128a_split"), pipeline)
    assert module.get("threads") == 1024 and "        if tidx < 512:" in emit(module, pipeline)
    wide = plan(make_spec("c128a_split"), "sm90", pipeline)
    entry = build_plans([wide], Store(tmp_path), workers=1)[wide.key]
    assert isinstance(entry, Entry), entry
