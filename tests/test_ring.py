"""The C128 ring state (docs/kernels.md §10) on the CPU: reference, interpreter, IR, build, checks."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from compressc import reference
from compressc.cli import main
from compressc.driver.compile import compile_source
from compressc.driver.cubin import check_cubin
from compressc.ir import interp, parse_module, print_module
from compressc.ir.from_spec import module_from_spec
from compressc.ir.interp import args_from_scenario, run_module
from compressc.ir.launch import launch_info
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.packs.wanted import spec_of
from compressc.passes import PassManager, PipelineError, parse_pipeline, resolve_pipeline
from compressc.runtime import ops
from compressc.runtime.resolve import build_command
from compressc.scenarios_ring import make_ring_scenario
from compressc.specs import default_specs, make_spec
from compressc.specs.errors import SpecError

RING = make_spec("c128a_compress", weight_dtype="f32", state_layout="ring")
# (chunks, capacity, dead requests): chunks longer than the ring, starting mid-window, decode rows
CASES = [
    ([(300, 600)], 256, ()),
    ([(300, 600), (127, 1), (1000, 200), (50, 90)], 256, (3,)),
    ([(1151, 1), (639, 1), (4000, 1)], 128, ()),
    ([(0, 400), (200, 700)], 384, ()),
]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _lower(spec=RING, pipeline: str = "default"):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


# -- the reference ------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks,capacity,dead", CASES)
def test_ring_reference_equals_the_paged_reference_on_the_same_history(chunks, capacity, dead) -> None:
    sc = make_ring_scenario(chunks, capacity=capacity, dead=dead, seed=len(chunks))
    ring = sc.reference_compress(sc.poisoned_compressed_kv())
    paged = sc.paged_compress(sc.poisoned_compressed_kv())
    assert bool(sc.active().any())
    assert torch.equal(_bits(ring), _bits(paged))  # bit for bit: the same rows, the same arithmetic


def test_the_scenario_reads_both_sources_and_skips_what_it_must() -> None:
    sc = make_ring_scenario([(300, 600), (127, 1), (1000, 200), (50, 90)], dead=(3,))
    assert int(sc.slot_mapping[-2:].max()) == -1  # padding
    assert bool((sc.slot_mapping[sc.token_to_req_indices.long() == 3][:-2] == -1).all())  # ring block -1
    boundary = (sc.positions + 1) % 128 == 0
    assert bool((boundary & (sc.kv_slot_mapping < 0)).any())  # a boundary row that does not store
    assert int(sc.active().sum()) == 7
    # a ring that lies about a row before the chunk changes the output: it is read from the ring
    sc.state_cache[int(sc.block_table[2, 0]), 999 % 256] += 1.0  # in p = 1023's window
    assert not torch.equal(_bits(sc.reference_compress(sc.poisoned_compressed_kv())),
                           _bits(sc.paged_compress(sc.poisoned_compressed_kv())))


def test_ring_slots_keep_the_tail_of_each_chunk() -> None:
    sc = make_ring_scenario([(300, 600), (10, 5)], capacity=256, padding=2)
    slot, tail = sc.slot_mapping, sc.tail_slot_mapping
    blk0, blk1 = int(sc.block_table[0, 0]), int(sc.block_table[1, 0])
    assert int(slot[0]) == blk0 * 256 + 300 % 256 and int(slot[600]) == blk1 * 256 + 10
    assert bool((tail[: 600 - 256] == -1).all()) and torch.equal(tail[344:605], slot[344:605])
    assert slot[-2:].tolist() == tail[-2:].tolist() == [-1, -1]
    assert reference.ring_capacity(0) == 128 and reference.ring_capacity(1) == 256
    assert reference.ring_capacity(129) == 384


def test_steps_with_tail_saves_reproduce_the_paged_path() -> None:
    """A sequence fed in chunks (one longer than the ring): compress, then save the tail, step by
    step; every step's rows equal the paged reference over the whole history."""
    full = make_ring_scenario([(0, 1100)], capacity=256, padding=0, seed=3)
    want = full.paged_compress(full.poisoned_compressed_kv())
    ring = torch.full_like(full.state_cache, 9.0)
    got = full.poisoned_compressed_kv()
    for lo, hi in ((0, 100), (100, 700), (700, 701), (701, 1100)):
        step = replace(full, state_cache=ring, kv=full.kv[lo:hi], score=full.score[lo:hi],
                       positions=full.positions[lo:hi], token_to_req_indices=full.token_to_req_indices[lo:hi],
                       kv_slot_mapping=full.kv_slot_mapping[lo:hi],
                       query_start_loc=torch.tensor([0, hi - lo], dtype=torch.int32))
        slots, tail = reference.ring_slots(step.query_start_loc, step.token_to_req_indices, step.positions,
                                           step.block_table, 256, hi - lo)
        step = replace(step, slot_mapping=slots, tail_slot_mapping=tail)
        got[lo:hi] = step.reference_compress(got[lo:hi].clone())
        ops.save_ring_tail(ring, step.kv, step.score, step.ape, step.positions, tail, 256)
    active = full.active()
    assert int(active.sum()) == 1100 // 128 - 1  # the scenario's first boundary row stores nothing
    assert torch.equal(_bits(got[active]), _bits(want[active]))


def test_the_tail_save_op_matches_the_reference_and_skips_minus_one() -> None:
    sc = make_ring_scenario([(300, 600), (5, 3)], capacity=256, padding=2)
    tail = sc.tail_slot_mapping.clone()
    tail[-1] = 0  # a real write to ring slot 0, beside the -1 rows the op sends there
    got, want = sc.state_cache.clone(), sc.state_cache.clone()
    ops.save_ring_tail(got, sc.kv, sc.score, sc.ape, sc.positions, tail, 256)
    reference.save_ring_tail(want, sc.kv, sc.score, sc.ape, sc.positions, tail)
    assert torch.equal(_bits(got), _bits(want)) and not torch.equal(got, sc.state_cache)
    untouched = torch.ones(got.shape[:2], dtype=torch.bool)
    written = tail[tail >= 0]
    untouched.view(-1)[written] = False
    assert torch.equal(got[untouched], sc.state_cache[untouched])


# -- the interpreter of the lowered module -----------------------------------------------------------
@pytest.mark.parametrize("pipeline", ["default", "baseline", "thread-map{elems-per-lane=4,window-split=2},"
                                      "vectorize{bits=64},lower-reduction,plan-smem,rows-in-flight{rows=2},page-lookup,"
                                      "rescale,operand-loads,occupancy,cache-hints,overlap-launch"])
@pytest.mark.parametrize("strided", [False, True])
def test_interpreter_matches_the_reference(pipeline: str, strided: bool) -> None:
    sc = make_ring_scenario([(300, 600), (127, 1), (1000, 200), (50, 90)], capacity=384, dead=(3,),
                            strided=strided, seed=7)
    module = _lower(RING, pipeline)
    got = sc.poisoned_compressed_kv()
    rows = run_module(module, args_from_scenario(sc, got))
    want, active = sc.run_reference(), sc.active()
    assert rows == active.nonzero().flatten().tolist()
    assert torch.equal(got[~active].view(torch.uint8), want[~active].view(torch.uint8))
    torch.testing.assert_close(got[active], want[active], rtol=2e-5, atol=1e-6)


def test_interpreter_reads_the_ring_where_the_chunk_does_not_reach() -> None:
    sc = make_ring_scenario([(1000, 200), (700, 100)], capacity=256, padding=0)
    module = _lower()
    base = sc.poisoned_compressed_kv()
    run_module(module, args_from_scenario(sc, base))
    sc.state_cache[int(sc.block_table[1, 0]), 640 % 256] += 5.0  # window row 0 of p = 767 (request 1)
    moved = sc.poisoned_compressed_kv()
    run_module(module, args_from_scenario(sc, moved))
    row, inside = int((sc.positions == 767).nonzero()), int((sc.positions == 1151).nonzero())
    assert bool(sc.active()[row]) and bool(sc.active()[inside])
    assert not torch.equal(base[row], moved[row])
    assert torch.equal(base[inside], moved[inside])  # p = 1151's window lies wholly in its chunk


def test_the_ring_state_is_lowered_to_kd_ops_that_the_interpreter_runs(monkeypatch) -> None:
    module = _lower()
    names = [op.name for op in module.ops]
    at = names.index("cc.ring_state")
    assert names[at + 1:at + 3] == ["kd.ring_window", "kd.ring_base"]
    base = module.ops[at + 2]
    assert dict(base.attrs) == {"window": 128, "row_words": 2 * int(module.ops[at].attr("state_width"))}
    wrong = replace(module, ops=tuple(replace(op, attrs=tuple((k, v + 4 if k == "row_words" else v)
                                                              for k, v in op.attrs)) if op is base else op
                                      for op in module.ops))
    with pytest.raises(VerifyError, match=r"row_words=\d+: must be \d+: the row's kd ops are lower-row's "
                                          "lowering of cc.ring_state %ring"):
        verify(wrong)
    sc = make_ring_scenario([(1000, 200), (700, 100)], capacity=256, padding=0)
    good, bad = sc.poisoned_compressed_kv(), sc.poisoned_compressed_kv()
    run_module(module, args_from_scenario(sc, good))
    monkeypatch.setattr(interp, "verify", lambda module: module)  # the edited op, run unverified
    run_module(wrong, args_from_scenario(sc, bad))
    row = int((sc.positions == 767).nonzero())  # its window starts in the ring
    assert not torch.equal(good[row], bad[row])
    assert "ring_base = ring_blk * ring_block_stride + ring_row0 * " in emit(module, "default")


# -- the IR: text, verifier, passes ----------------------------------------------------------------
def test_ring_modules_round_trip_and_name_the_layout() -> None:
    for module in (module_from_spec(RING), _lower()):
        assert parse_module(print_module(module)) == module
    text = print_module(module_from_spec(RING))
    assert 'state_layout = "ring"' in text and "cc.ring_state(%state_cache, %block_table, %kv" in text
    assert "%win = cc.window(%ring, %active)" in text
    assert "state_layout" not in print_module(module_from_spec(make_spec("c128a_compress")))
    assert RING.variant == "c128a_compress_ring_h512_q64_r64_f32"
    assert RING in default_specs()


def test_the_verifier_keeps_ring_ops_and_schedules_apart() -> None:
    lowered = _lower()
    lane = lowered.replace_ops("cc.window", lambda op: op.with_sched(page_lookup="lane"))
    with pytest.raises(VerifyError, match="page_lookup='lane': must be 'row': a ring window has one state"):
        verify(lane)
    smem = lowered.replace_ops("cc.window", lambda op: op.with_sched(stage="smem"))
    with pytest.raises(VerifyError, match="stage='smem': is a paged-state schedule"):
        verify(smem)
    paged = replace(module_from_spec(RING), attrs=module_from_spec(make_spec("c128a_compress",
                                                                             weight_dtype="f32")).attrs)
    with pytest.raises(VerifyError):
        verify(paged)  # the paged ABI has no kv/score/ape arguments
    no_ring = replace(module_from_spec(RING), ops=tuple(op for op in module_from_spec(RING).ops
                                                        if op.name != "cc.ring_state"))
    with pytest.raises(VerifyError, match="used before it is defined|pools through cc.ring_state"):
        verify(no_ring)
    wide = module_from_spec(RING).replace_ops(
        "cc.ring_state", lambda op: replace(op, attrs=tuple((k, 64 if k == "ape_rows" else v)
                                                           for k, v in op.attrs)))
    with pytest.raises(VerifyError, match="ape_rows=64"):
        verify(wide)


@pytest.mark.parametrize("passes,refused", [
    ("rows-in-flight,page-lookup{by=lane}", "page-lookup{by=lane}"),
    ("rows-in-flight,page-lookup,l2-prefetch", "l2-prefetch"),
    ("rows-in-flight,page-lookup,rescale{per=row},smem-stage", "smem-stage"),
    # the old spellings (the window-prefetch alias) expand to the same passes
    ("window-prefetch{page-lookup=lane}", "page-lookup{by=lane}"),
    ("window-prefetch{l2-prefetch=true}", "l2-prefetch"),
    ("window-prefetch{stage=smem}", "smem-stage"),
])
def test_the_window_passes_refuse_paged_paths_on_a_ring(passes: str, refused: str) -> None:
    pipeline = f"thread-map{{grid=tiled}},vectorize,lower-reduction,plan-smem,{passes}"
    with pytest.raises(PipelineError, match=re.escape(f"{refused}: a ring window reads one state block")):
        _lower(RING, pipeline)


def test_ring_is_a_layout_of_the_c128_compress_kernel_only() -> None:
    with pytest.raises(SpecError, match="state_layout='ring'.*c128a_compress only"):
        make_spec("c4a", state_layout="ring")
    with pytest.raises(SpecError, match="state_layout='rings': must be one of paged, ring"):
        make_spec("c128a_compress", state_layout="rings")


# -- emitted source, real compiles -------------------------------------------------------------------
def test_emitted_source_reads_the_chunk_or_the_ring() -> None:
    source = emit(_lower(), "default")
    for line in ("ring_split = cute.make_tensor(query_start_loc", "if wi >= ring_split:",
                 "ring_row0 = (pos - 127) % Int64(ring_capacity)", "rSC[e, r] = rSC[e, r] + rAP[e]",
                 "base = ring_base + Int64(wi) * 1024"):
        assert line in source, line
    assert "state_block_shift" not in source and "mBT" not in source  # no paged lookups


@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a"])
def test_ring_kernel_compiles_to_a_cubin_with_its_abi(arch: str) -> None:
    module = _lower(RING, "default")
    launch = launch_info(module)
    artifacts = compile_source(emit(module, "default"), arch)
    check_cubin(artifacts.cubin, launch.entry, launch.params, launch.block, arch=arch)
    assert artifacts.report.spill_stores == 0
    names = [p.name for p in launch.params]
    assert names[7:11] == ["kv", "score", "ape", "query_start_loc"] and "ring_capacity" in names


# -- the command line and the cache ------------------------------------------------------------------
def test_every_variant_command_names_the_ring() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["opt", "--spec", "c128a_compress", "--state-layout", "ring", "-p", ""])
    assert out.exit_code == 0 and "cc.ring_state" in out.stdout
    bad = runner.invoke(main, ["opt", "--spec", "c4a", "--state-layout", "ring"])
    assert bad.exit_code != 0 and "c128a_compress only" in bad.output
    orphan = runner.invoke(main, ["build", "--state-layout", "ring"])
    assert orphan.exit_code != 0 and "--state-layout needs --spec" in orphan.output
    assert build_command(RING, "sm_90a").endswith("--weight-dtype f32 --state-layout ring")
    assert spec_of({"variant": RING.variant, "kernel": "c128a_compress"}) == RING
