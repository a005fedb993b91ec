"""The online C128 merge (docs/kernels.md §9) on a CPU: plan, reference, interpreter, emitter, compile."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressc import reference
from compressc.acceptance import compare_cache_bytes
from compressc.ir.from_spec import module_from_spec
from compressc.ir.interp import run_module
from compressc.ir.interp_online import args_from_online, run_online
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.online import OnlinePlan, plan_online_c128_segments
from compressc.online_scenarios import B, make_online_step
from compressc.passes import PassManager, PipelineError, parse_pipeline, resolve_pipeline
from compressc.passes.manager import DEFAULT_FETCH
from compressc.runtime import ops, validate
from compressc.runtime.validate_online import check_segment_bounds
from compressc.specs import make_spec
from compressc.specs.abi import abi

AFTER_ROWS = DEFAULT_FETCH.removeprefix("rows-in-flight,")  # the window passes after it

SPEC = make_spec("c128a_online", weight_dtype="f32")
HEAD = SPEC.head


def _lower(pipeline: str = "default", spec=SPEC):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


# -- §9.2: the plan -----------------------------------------------------------------------------
def test_the_spec_example_plans_exactly() -> None:
    rsi = 5
    plan = plan_online_c128_segments([0, 300], [420], [rsi])  # rows 0..299 at positions 120..419
    assert plan.emit == ((0, 8, rsi, 7, -1), (8, 128, -1, 135, -1), (136, 128, -1, 263, -1))
    assert plan.update == ((264, 36, -1, -1, rsi),)
    assert plan.reset == ()


def test_plan_seeds_only_mid_window_starts_and_resets_chunks_ending_on_a_boundary() -> None:
    plan = plan_online_c128_segments([0, 128, 129, 129, 389], [128, 256, 7, 389], [3, 1, 2, -1])
    # request 0: positions 0..127 fresh, one emit, ends on a boundary; request 1: a decode token at
    # position 255 seeded; request 2 has no rows; request 3 has no state row
    assert plan.emit == ((0, 128, -1, 127, -1), (128, 1, 1, 128, -1))
    assert plan.update == ()
    assert plan.reset == (3, 1)
    mid = plan_online_c128_segments([0, 10], [260], [4])  # positions 250..259 across 255
    assert mid.emit == ((0, 6, 4, 5, -1),) and mid.update == ((6, 4, -1, -1, 4),)


def test_plan_tensors_are_int32_tables() -> None:
    emit, update, reset = plan_online_c128_segments([0, 300], [420], [5]).tensors()
    assert emit.dtype == update.dtype == torch.int32 and emit.shape == (3, 5) and update.shape == (1, 5)
    assert reset.dtype == torch.int64 and reset.numel() == 0
    assert OnlinePlan().tensors()[0].shape == (0, 5)


@pytest.mark.parametrize(("args", "message"), [
    (([0, 3], [2], [0]), "request 0: query_start_loc must be non-decreasing and a chunk no longer than"),
    (([0, 3, 4], [9], [0]),
     r"query_start_loc must have num_reqs \+ 1 entries and state_rows num_reqs: got 3, 1"),
    (([0, 3], [9], [0], 100), "ratio must be a power of two, got 100"),
])
def test_plan_errors_name_the_argument(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_online_c128_segments(*args)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 300)), min_size=1, max_size=4))
def test_plan_pieces_cover_each_chunk_and_emit_exactly_its_boundaries(chunks) -> None:
    starts = [0]
    for _, n in chunks:
        starts.append(starts[-1] + n)
    seq_lens = [f + n for f, n in chunks]
    plan = plan_online_c128_segments(starts, seq_lens, list(range(len(chunks))))
    pieces = sorted(plan.emit + plan.update)
    assert [p[0] for p in pieces] == [sum(p[1] for p in pieces[:i]) for i in range(len(pieces))]
    assert sum(p[1] for p in pieces) == starts[-1]
    position = {starts[r] + i: f + i for r, (f, n) in enumerate(chunks) for i in range(n)}
    assert sorted(p[3] for p in plan.emit) == [t for t, p in position.items() if (p + 1) % 128 == 0]
    for base, _, read, _, _ in pieces:  # only a chunk's first piece reads, and only mid-window
        assert (read >= 0) == (base in starts and position[base] % 128 > 0)


# -- docs/kernels.md §9.3: the reference is the pooling of docs/kernels.md §3 step 3 ---------------
def test_online_reference_pools_the_window_like_the_paged_reference() -> None:
    gen = torch.Generator().manual_seed(7)
    kv, score, ape = (torch.randn(128, HEAD, generator=gen) for _ in range(3))
    positions = torch.arange(128)
    state = torch.cat((kv, score + ape), dim=1).reshape(16, 8, 2 * HEAD)  # 16 pages of 8 rows
    pool_spec = make_spec("c128a_compress")
    want = reference.pool(pool_spec, state, torch.zeros(128, dtype=torch.int32), positions,
                          torch.arange(16, dtype=torch.int32)[None], 8, torch.tensor([127]))[0]
    run_state = torch.zeros(2, 3 * HEAD)
    got = torch.zeros(128, HEAD)
    # two steps: positions 0..59 (an update), then 60..127 (seeded, emits row 127)
    first = plan_online_c128_segments([0, 60], [60], [1])
    reference.online_c128_merge(kv, score, ape, positions, run_state, first.tensors()[1], got)
    rest = plan_online_c128_segments([0, 60, 128], [60, 128], [-1, 1])
    assert rest.emit == ((60, 68, 1, 127, -1),) and rest.reset == (1,)
    reference.online_c128_merge(kv, score, ape, positions, run_state, rest.tensors()[0], got)
    torch.testing.assert_close(got[127], want, rtol=2e-6, atol=1e-6)


# -- the interpreter against the reference ------------------------------------------------------
def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int32).numpy()


def _merge_both(module, step, segments: torch.Tensor):
    """(interpreter, reference) outputs of one launch: (compressed_kv, run_state) each."""
    outs = []
    for run in ("interp", "ref"):
        out, state = step.poisoned(torch.empty(step.T, HEAD)), step.run_state.clone()
        if run == "interp":
            assert run_online(module, args_from_online(SPEC, step.kv, step.score, step.ape, step.positions,
                                                       state, segments, out)) == list(range(len(segments)))
        else:
            reference.online_c128_merge(step.kv, step.score, step.ape, step.positions, state, segments, out)
        outs.append((out, state))
    return outs


def _assert_merge_matches(module, step, segments: torch.Tensor) -> None:
    (out, state), (want_out, want_state) = _merge_both(module, step, segments)
    emitted = [s[3] for s in segments.tolist() if s[3] >= 0]
    written = [s[4] for s in segments.tolist() if s[4] >= 0]
    others = [t for t in range(step.T) if t not in emitted]
    assert np.array_equal(_bits(out[others]), _bits(want_out[others]))  # the sentinel, untouched
    torch.testing.assert_close(out[emitted], want_out[emitted], rtol=1e-5, atol=1e-6)
    kept = [r for r in range(state.shape[0]) if r not in written]
    assert np.array_equal(_bits(state[kept]), _bits(step.run_state[kept]))
    torch.testing.assert_close(state[written], want_state[written], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pipeline", ["default", "baseline"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_interpreter_matches_the_reference_on_emit_and_update_segments(pipeline: str, seed: int) -> None:
    step = make_online_step(300, seed, stride_pad=4 * seed, state_pad=16 * (seed % 2))
    module = _lower(pipeline)
    emit_t, update_t, _ = step.tables()
    assert len(emit_t) and len(update_t)
    assert any(s[2] >= 0 for s in step.plan.emit + step.plan.update)  # seeded and fresh both occur
    assert any(s[2] < 0 for s in step.plan.emit + step.plan.update)
    _assert_merge_matches(module, step, emit_t)
    _assert_merge_matches(module, step, update_t)


def test_an_edited_merge_op_is_refused_and_gives_wrong_bytes(monkeypatch) -> None:
    """The online merge's kd ops: the verifier holds them to lower-row's; run unverified, a seed
    read from the wrong part of the running state pools wrong values."""
    from compressc.ir import interp_online, parse_module, print_module

    module = _lower()
    text = print_module(module)
    wrong = parse_module(text.replace("kd.seed_state {elems = 8, head = 512",
                                      "kd.seed_state {elems = 8, head = 256"))
    with pytest.raises(VerifyError, match="kd.seed_state: head=256: must be 512"):
        verify(wrong)
    step = make_online_step(300, 2)
    _assert_merge_matches(module, step, step.tables()[0])
    monkeypatch.setattr(interp_online, "verify", lambda module: module)
    with pytest.raises(AssertionError):  # the seeded segments' (sum, weighted sum) from the max's words
        _assert_merge_matches(wrong, step, step.tables()[0])


def test_segments_outside_the_plan_emit_and_write_together_or_not_at_all() -> None:
    step = make_online_step(64, 11)
    table = torch.tensor([[0, 20, 1, 19, 2], [20, 5, -1, -1, -1], [25, 3, 0, 30, 1]], dtype=torch.int32)
    _assert_merge_matches(_lower(), step, table)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([2, 4, 8]), st.sampled_from([32, 64, 128]), st.integers(1, 6), st.integers(0, 999))
def test_every_schedule_gives_the_reference(elems: int, bits: int, rows: int, seed: int) -> None:
    bits = min(bits, 32 * elems)
    pipeline = (f"thread-map{{elems-per-lane={elems}}},vectorize{{bits={bits}}},lower-reduction,plan-smem,"
                f"rows-in-flight{{rows={rows}}},{AFTER_ROWS}")
    step = make_online_step(140, seed)
    emit_t, update_t, _ = step.tables()
    _assert_merge_matches(_lower(pipeline), step, torch.cat((emit_t, update_t)))


def _store_args(module, step, compressed_kv: torch.Tensor, k_cache: torch.Tensor) -> dict:
    """The c128a_store ABI of the step as the interpreter takes it."""
    spec = step.store_spec
    values = validate.row_values(step.token_to_req_indices, step.positions, step.slot_mapping,
                                 step.kv_slot_mapping)
    values |= validate.store_values(spec, step.rms_norm_weight, step.rms_norm_eps, step.cos_sin_cache,
                                    k_cache, B)
    tensors = {"compressed_kv": compressed_kv, "token_to_req_indices": step.token_to_req_indices,
               "positions": step.positions, "slot_mapping": step.slot_mapping, "k_cache": k_cache,
               "rms_norm_weight": step.rms_norm_weight.float(), "cos_sin_cache": step.cos_sin_cache,
               "kv_slot_mapping": step.kv_slot_mapping}
    return {p.name: tensors[p.name].reshape(-1).numpy() if p.kind == "ptr" else values[p.name]
            for p in abi(spec)}


@pytest.mark.parametrize("weight_dtype", ["bf16", "f32"])
def test_the_step_composition_writes_the_reference_cache_bytes(weight_dtype: str) -> None:
    """§9.4 through the interpreters: emit, update, reset, then the unchanged c128a_store."""
    step = make_online_step(400, 6, weight_dtype=weight_dtype)
    assert step.plan.reset and step.plan.emit
    merge, store = _lower(), _lower(spec=step.store_spec)
    emit_t, update_t, reset = step.tables()
    got_cache, got_state = step.poisoned(step.k_cache), step.run_state.clone()
    pooled = torch.empty(step.T, HEAD)
    for table in (emit_t, update_t):
        run_online(merge, args_from_online(SPEC, step.kv, step.score, step.ape, step.positions, got_state,
                                           table, pooled))
    reference.online_state_reset(got_state, reset, HEAD)
    run_module(store, _store_args(store, step, pooled, got_cache))
    want_cache, want_state = step.poisoned(step.k_cache), step.run_state.clone()
    step.run_reference(want_state, want_cache, torch.zeros(step.T, HEAD))
    report = compare_cache_bytes(step.store_spec, got_cache, want_cache, step.active_slots(),
                                 kv_cache_block_size=B)
    assert report.ok and report.code_steps <= 1, str(report)
    assert torch.equal(got_state[list(step.plan.reset), :HEAD], torch.full((len(reset), HEAD), -torch.inf))
    torch.testing.assert_close(got_state, want_state, rtol=1e-5, atol=1e-6)


# -- the schedule's rules ------------------------------------------------------------------------
def test_the_online_merge_runs_one_cta_per_segment() -> None:
    lowered = _lower()
    assert lowered.get("grid") == "rows" and lowered.get("threads") == 64
    assert [op.name for op in lowered.ops if op.name.startswith("kd.")] == [
        "kd.softmax_init", "kd.seed_state", "kd.segment_batches", "kd.pooled", "kd.emit_pooled",
        "kd.write_state", "kd.lanes", "kd.cta_row", "kd.segment", "kd.row"]  # the row body, then the loop
    assert _lower("baseline").get("threads") == 256  # docs/kernels.md §9.1's 2 columns a thread
    with pytest.raises(VerifyError, match=r"grid='tiled': must be 'rows': the online merge runs one CTA "
                                          r"per segment \(docs/kernels.md §9.1\)"):
        _lower(f"thread-map{{grid=tiled}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")


def test_rows_in_flight_has_a_ceiling() -> None:
    with pytest.raises(PipelineError, match=r"rows-in-flight rows=17: the online merge holds at most 16 "
                                            r"token rows in registers"):
        _lower("thread-map,vectorize,lower-reduction,plan-smem,rows-in-flight{rows=17}")
    edited = _lower().replace_ops("cc.online_merge", lambda op: op.with_sched(rows_in_flight=17))
    with pytest.raises(VerifyError, match=r"cc.online_merge %acc: rows_in_flight=17: must be 1..16 token "
                                          r"rows loaded before their updates"):
        verify(edited)


# -- emitted source and a real compile -----------------------------------------------------------
def test_emitted_source_follows_the_schedule() -> None:
    source = emit(_lower(), "default")
    for line in ("mSeg = cute.make_tensor(segments + Int64(row) * 5, cute.make_layout(5))",
                 "for chunk in cutlass.range((seg_rows + 3) // 4, unroll=1):",
                 "k = k if k < seg_rows else seg_rows - 1",
                 "ape_at = (p & 127) * 512 + col  # ape[p mod 128]",
                 "beta = ops.ex2((s - m_new) * LOG2E)",
                 "rX[e] = rA[e] / rL[e]  # IEEE division, as the reference",
                 "if seg_write >= 0:"):
        assert line in source, line
    assert "ops.ld_stream(kv.toint()" in source
    baseline = emit(_lower("baseline"), "baseline")
    assert "for chunk in cutlass.range((seg_rows + 0) // 1, unroll=1):" in baseline
    assert "ld_stream" not in baseline and "keep=True" not in baseline


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a"])
def test_the_kernel_compiles_to_a_cubin_with_its_abi(arch: str) -> None:
    from compressc.driver.compile import compile_source
    from compressc.driver.cubin import check_cubin

    module = _lower()
    art = compile_source(emit(module, "default"), arch)
    info = check_cubin(art.cubin, art.entry, abi(SPEC), art.block, arch=arch)
    assert art.entry == "cutlass_c128a_online_h512_q64_r64_f32" and info.arch == arch
    assert art.report.spill_stores == 0


# -- the runtime's checks, before any lookup or launch ---------------------------------------------
def _merge_call(step, **change):
    args = dict(kv=step.kv, score=step.score, ape=step.ape, positions=step.positions,
                run_state=step.run_state, segments=step.tables()[0], compressed_kv=torch.empty(step.T, HEAD))
    ops.online_c128_merge(**(args | change))


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"score": torch.zeros(64, 514)[:, :512]}, ValueError,
     r"score must have contiguous rows \(stride\(1\) == 1\) and a row stride that is a multiple of 4, "
     r"got strides \(514, 1\)"),
    ({"run_state": torch.zeros(4, 1540)[:, :1536]}, ValueError, "run_state must have contiguous rows .* "
     r"multiple of 16, got strides \(1540, 1\)"),
    ({"segments": torch.zeros(3, 4, dtype=torch.int32)}, ValueError,
     r"segments must be a contiguous \[n, 5\] tensor of \(row_base, num_rows, read_row, emit_token, "
     r"write_row\)"),
    ({"segments": torch.zeros(3, 5, dtype=torch.int64)}, TypeError,
     "segments must have dtype torch.int32, got torch.int64"),
    ({"ape": torch.zeros(64, 512)}, ValueError, r"ape must be a contiguous \[128, 512\] tensor"),
    ({"positions": torch.zeros(3, dtype=torch.int64)}, ValueError,
     "positions must be a contiguous 1-D tensor of at least T = kv.shape"),
    ({"compressed_kv": torch.zeros(3, 512)}, ValueError, r"compressed_kv must be a contiguous \[>= T, 512\]"),
    ({}, ValueError, "must be on a CUDA device, got cpu"),
])
def test_merge_arguments_are_checked_with_the_fix_named(change: dict, error, message: str) -> None:
    with pytest.raises(error, match=message):
        _merge_call(make_online_step(64, 3), **change)


def test_step_arguments_are_checked_before_the_first_launch() -> None:
    step = make_online_step(64, 4)
    args = list(step.step_args(step.run_state, step.k_cache))
    bad = list(args)
    bad[5] = bad[5].long()
    with pytest.raises(TypeError, match="emit_segments must have dtype torch.int32, got torch.int64"):
        ops.compress_c128a_online(*bad)
    bad = list(args)
    bad[9] = bad[9][:-1]
    with pytest.raises(ValueError, match=f"slot_mapping must have T = kv.shape.0. = {step.T} entries, "
                                         f"got {step.T - 1}"):
        ops.compress_c128a_online(*bad)
    bad = list(args)
    bad[7] = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="reset_rows must be a 1-D int64 tensor of run_state rows"):
        ops.compress_c128a_online(*bad)
    with pytest.raises(ValueError, match="must be on a CUDA device, got cpu"):
        ops.compress_c128a_online(*args)


def test_segment_bounds_name_the_bad_segment() -> None:
    table = torch.tensor([[0, 4, -1, 3, -1], [2, 9, -1, -1, 7]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"segments\[1\] = \(2, 9, -1, -1, 7\): rows \[2, 11\) outside the "
                                         r"T = 10 token rows; .* \(run_state has 4\)"):
        check_segment_bounds(table, 10, 4)
    check_segment_bounds(table[:1], 10, 4)


# -- shipping: the default build, inspect and tune ------------------------------------------------
def test_the_default_matrix_holds_the_online_merge_once() -> None:
    from compressc.specs import default_specs

    online = [s.variant for s in default_specs() if s.segmented]
    assert online == ["c128a_online_h512_q64_r64_f32"]


def test_tune_refuses_the_online_merge(tmp_path) -> None:
    from click.testing import CliRunner

    from compressc.cli.main import main

    result = CliRunner().invoke(main, ["tune", "--arch", "sm90", "--prepare", str(tmp_path / "t"),
                                       "--spec", "c128a_online"])
    assert result.exit_code == 1
    assert ("--spec c128a_online: compressc tune measures the paged-state kernels (c4a, indexer_fp8, "
            "indexer_mxfp4, c128a_compress, c128a_store, c128a_split) only") in result.output


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
def test_build_and_inspect_list_the_online_merge(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from compressc.cli.main import main

    out = tmp_path / "kernels"
    built = CliRunner().invoke(main, ["build", "--arch", "sm90", "--spec", "c128a_online", "--weight-dtype",
                                      "f32", "-j", "1", "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert "│ c128a_online_h512_q64_r64_f32 │ sm_90a │" in built.output
    assert "1/1 kernels ready" in built.output
    monkeypatch.setenv("COMPRESSC_CACHE_DIR", str(out))
    listed = CliRunner().invoke(main, ["inspect", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "c128a_online_h512_q64_r64_f32" in listed.output
