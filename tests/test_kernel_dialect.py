"""The kernel dialect: the row loop as `kd.*` ops that print, parse, verify, emit and run.

- every schedule `compressc tune` may propose runs, through the grid interpreter, CTA by CTA
  on simulated GPUs of several sizes, to the reference's bytes, each active row exactly once;
- a broken row loop (rows left out, an inactive row run) is caught on the CPU;
- the nesting is verified with messages that name the op;
- `compressc emit FILE.cir` restarts from the printed text.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_interp import _assert_cache_accepted, _assert_pooled_close, _seed

from compressc.cli import main
from compressc.ir import parse_module, print_module
from compressc.ir.from_spec import module_from_spec
from compressc.ir.interp import args_from_scenario, run_module
from compressc.ir.interp_grid import GridError, run_program
from compressc.ir.kd import kd_ops
from compressc.ir.verifier import VerifyError, verify
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline
from compressc.passes.manager import DEFAULT_FETCH, PipelineError
from compressc.scenarios import make_scenario
from compressc.specs import default_specs, make_spec
from compressc.tune.candidates import candidates

POOL_ONLY = "c128a_compress"
GPUS = ((1, 1), (3, 2), (132, 8))  # (SMs, CTAs an SM holds): long runs per CTA .. one row each


def _lower(spec, pipeline: str = "default"):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


def _run(module, spec, sc, gpu):
    out = sc.poisoned_compressed_kv() if spec.kernel == POOL_ONLY else sc.poisoned_cache()
    rows = run_module(module, args_from_scenario(sc, out), sm_count=gpu[0], resident=gpu[1])
    return out, rows


def _check(module, spec, kind: str, T: int, gpu, seed: int) -> None:
    sc = make_scenario(spec, kind, T, seed=seed)
    got, rows = _run(module, spec, sc, gpu)
    active = torch.nonzero(sc.active()).flatten().tolist()
    assert rows == sorted(rows) and rows == active  # each active row once, in launch order
    if spec.kernel == POOL_ONLY:
        _assert_pooled_close(got, sc.run_reference(), sc)
    else:
        _assert_cache_accepted(spec, got, sc.run_reference(), sc)


def _tune_cases():
    # csa (docs/kernels.md §12) is not tuned: its parts are; tests/test_csa.py runs it
    tuned = (s for s in default_specs() if s.kernel != "csa")
    for spec in (s for s in tuned if s.weight_dtype == "bf16" or s.kernel == POOL_ONLY):
        for i, cand in enumerate(candidates(spec, "sm_90a", limit=40)):
            yield pytest.param(spec, cand.pipeline, id=f"{spec.variant}-{i}")


@pytest.mark.parametrize("spec,pipeline", list(_tune_cases()))
def test_every_schedule_tune_may_pick_gives_the_reference_bytes(spec, pipeline: str) -> None:
    module = _lower(spec, pipeline)
    kind, T = ("prefill", 300) if spec.ratio == 128 else ("mixed", 150)
    gpu = GPUS[_seed(pipeline) % len(GPUS)]
    _check(module, spec, kind, T, gpu, _seed(spec.variant, pipeline))


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: f"{g[0]}sm-x{g[1]}")
@pytest.mark.parametrize("grid", ["grid=rows", "grid=runs,rows-per-cta=2", "grid=runs,rows-per-cta=32",
                                  "grid=tiled,ctas-per-sm=1", "grid=tiled,elems-per-lane=4",
                                  "grid=tiled,cluster-split=2"])
def test_each_grid_on_each_gpu_size(grid: str, gpu) -> None:
    spec = make_spec("c4a")
    module = _lower(spec, f"thread-map{{{grid}}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")
    _check(module, spec, "mixed", 1100, gpu, _seed(grid, gpu))


@pytest.mark.parametrize("hints", ["stream", "none"])
def test_the_staged_window_and_cache_hints(hints: str) -> None:
    spec = make_spec("c4a")
    module = _lower(spec, "thread-map{grid=tiled,elems-per-lane=4},vectorize,lower-reduction,plan-smem,"
                          "rows-in-flight,page-lookup,rescale{per=row},smem-stage,operand-loads"
                          + (",cache-hints" if hints == "stream" else ""))
    assert module.find("kd.staged_rows") is not None
    _check(module, spec, "prefill", 700, GPUS[0], _seed("staged", hints))


def test_the_program_of_each_grid() -> None:
    spec = make_spec("c4a")
    names = {g: [op.name for op in kd_ops(_lower(spec, f"thread-map{{grid={g}}},vectorize,"
                                                       f"lower-reduction,plan-smem,{DEFAULT_FETCH}"))]
             for g in ("rows", "runs", "tiled")}
    assert names["rows"] == ["kd.lanes", "kd.static_smem", "kd.cta_row", "kd.guard", "kd.if_active", "kd.row",
                             "kd.end"]
    assert names["runs"][:5] == ["kd.lanes", "kd.static_smem", "kd.runs_span", "kd.ballot",
                                 "kd.unrolled_rows"]
    assert "kd.sweeps" in names["tiled"] and "kd.else" in names["tiled"]  # 2 warps: sweeps of 64 rows
    store = _lower(make_spec("c128a_store"), "default")
    assert kd_ops(store)[-1].name == "kd.grid_wait"  # the overlapped launch waits at the end


def _mutate(module, name: str, **attrs):
    def change(op):
        return replace(op, attrs=tuple((k, attrs.get(k, v)) for k, v in op.attrs))
    return replace(module, ops=tuple(change(op) if op.name == name else op for op in module.ops))


def _run_unverified(module, spec, sc, gpu):
    """The interpreter's row loop on a program the verifier would refuse (what a buggy
    lowering would produce): it must fail on its own."""
    from compressc.ir import interp
    from compressc.ir.launch import grid_rule
    from compressc.specs.launch import launch_grid

    args = args_from_scenario(sc, sc.poisoned_cache())
    mem, sched = interp._memory(module, args), interp._schedule(module)
    ratio = int(module.find("cc.row_guard").attr("ratio"))
    grid = launch_grid(grid_rule(module), mem.scalar("num_rows"), *gpu)
    return run_program(module, mem, grid,
                       lambda row, op: interp._guard(module, sched, mem, row, ratio, op))


def test_a_run_shorter_than_the_launch_is_refused_and_caught() -> None:
    spec = make_spec("c4a")
    module = _lower(spec, "thread-map{grid=runs,rows-per-cta=8},vectorize,lower-reduction,plan-smem,"
                          f"{DEFAULT_FETCH}")
    short = _mutate(module, "kd.unrolled_rows", rows=2)  # the launch still gives CTAs 8 rows
    with pytest.raises(VerifyError, match=r"kd\.unrolled_rows: program='kd\.unrolled_rows': must be "
                                          r"kd\.unrolled_rows \{'rows': 8\}"):
        verify(short)
    sc = make_scenario(spec, "prefill", 400, seed=3)
    with pytest.raises(GridError, match=r"active row\(s\) never ran"):
        _run_unverified(short, spec, sc, GPUS[0])


def test_a_row_body_without_its_ballot_bit_is_an_error() -> None:
    spec = make_spec("c4a")
    module = _lower(spec)
    ops = [op for op in module.ops if op.name != "kd.if_todo_bit"]
    ops.remove(next(op for op in reversed(ops) if op.name == "kd.end"))
    broken = replace(module, ops=tuple(ops))
    with pytest.raises(VerifyError, match="lower-grid"):
        verify(broken)
    sc = make_scenario(spec, "prefill", 64, seed=5)
    with pytest.raises(GridError, match=r"kd\.row ran row \d+, which its guard did not find active"):
        _run_unverified(broken, spec, sc, GPUS[0])


def test_an_edited_program_attribute_is_refused() -> None:
    module = _lower(make_spec("c4a"))
    want = (r"kd\.guard: program='kd\.guard': must be kd\.guard \{'ratio': 4, 'checks': '', 'window': 0, "
            r"'absent': False\}")
    with pytest.raises(VerifyError, match=want):
        verify(_mutate(module, "kd.guard", ratio=8))


def test_lower_grid_named_before_the_schedule_is_complete_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"lower-grid needs the whole schedule, and smem_bytes, "
                                            r"rows_in_flight \(rows-in-flight\) is unset"):
        _lower(make_spec("c4a"), f"thread-map,lower-grid,vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda ops: ops[:-1], "kd.unrolled_rows: its body is never closed with kd.end"),
        (lambda ops: [*ops, ops[-1]], "kd.end: closes a body that was never opened"),
        (lambda ops: [*ops[:-2], replace(ops[-1], name="kd.else"), *ops[-2:]],
         "kd.else: only kd.one_row_per_cta has an else branch"),
        (lambda ops: _two_elses(ops), "kd.else: a second else branch"),
    ],
    ids=["unclosed", "stray-end", "else", "second-else"],
)
def test_nesting_errors_name_the_op_and_line(edit, message: str) -> None:
    pipeline = f"thread-map{{grid=tiled}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    module = _lower(make_spec("c4a"), pipeline if "second" in message else "default")
    text = print_module(replace(module, ops=tuple(edit(list(module.ops)))))
    with pytest.raises(VerifyError, match=r"^k\.cir:\d+: " + message.replace(".", r"\.")):
        verify(parse_module(text, "k.cir"))


def _two_elses(ops):
    """The tiled program's kd.else repeated: a third branch the tree must refuse."""
    at = next(i for i, op in enumerate(ops) if op.name == "kd.else")
    return [*ops[:at + 2], ops[at], *ops[at + 2:]]


def test_the_lowered_text_round_trips_with_its_program() -> None:
    for spec in default_specs():
        lowered = _lower(spec)
        assert kd_ops(lowered) and parse_module(print_module(lowered)) == lowered


def test_emit_restarts_from_a_lowered_file(tmp_path: Path) -> None:
    runner = CliRunner()
    lowered = runner.invoke(main, ["opt", "--spec", "indexer_fp8"])
    assert lowered.exit_code == 0, lowered.output
    path = tmp_path / "lowered.cir"
    path.write_text(lowered.stdout)
    restarted = runner.invoke(main, ["emit", str(path)])
    direct = runner.invoke(main, ["emit", "--spec", "indexer_fp8"])
    assert restarted.exit_code == 0 and direct.exit_code == 0, restarted.output
    assert "# pipeline:  restarted from lowered.cir" in restarted.stdout

    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("# pipeline:")]

    assert body(restarted.stdout) == body(direct.stdout)
    spec_level = tmp_path / "spec.cir"
    spec_level.write_text(print_module(module_from_spec(make_spec("indexer_fp8"))))
    unlowered = runner.invoke(main, ["emit", str(spec_level)])
    assert unlowered.exit_code != 0 and "emit needs a lowered module" in unlowered.output
    piped = runner.invoke(main, ["emit", str(spec_level), "-p", "derived"])
    assert piped.exit_code == 0 and "class IndexerFp8H128Q128R64Bf16" in piped.stdout
