"""`compressc opt`: verify and re-print a `.cir` file, or lower a spec through a pipeline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressc.cli import main
from compressc.ir import parse_module, print_module
from compressc.ir.from_spec import module_from_spec
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline
from compressc.passes.manager import DEFAULT_FETCH, DEFAULT_PIPELINE, pipeline_string
from compressc.specs import make_spec

C4A = make_spec("c4a", 512, 64)
DUMP = "// -----// IR Dump After {} //----- //"


def _opt(*args: str):
    return CliRunner().invoke(main, ["opt", *args])


def _lowered(spec=C4A, pipeline: str = "default"):
    """What `opt` prints: "default" is the tuned pipeline of the variant on sm_90a where
    compressc/passes/tuned.json has one, else the derived default."""
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module, "sm_90a"))).run(module)


def _error(result, exit_code: int = 1) -> str:
    """The one `Error: ...` of a failed command (no traceback), without its prefix."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.startswith("Error: "), result.stderr
    return result.stderr[len("Error: ") :]


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "c4a.cir"
    path.write_text(print_module(module_from_spec(C4A)))
    return path


# -- FILE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", ["", "default"])
def test_without_a_pipeline_a_file_is_reprinted_byte_identical(tmp_path: Path, pipeline: str) -> None:
    path = tmp_path / "m.cir"
    text = print_module(module_from_spec(C4A) if not pipeline else _lowered())
    path.write_text(text)
    result = _opt(str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == text and result.stderr == ""


def test_reprinting_normalises_layout_and_drops_comments(tmp_path: Path) -> None:
    text = print_module(module_from_spec(C4A))
    messy = "// saved by hand\n" + text.replace("  %x = ", "\n    %x =   ").replace("}\n", "}  // end\n")
    path = tmp_path / "messy.cir"
    path.write_text(messy)
    result = _opt(str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == text


def test_a_file_through_a_pipeline(spec_file: Path) -> None:
    result = _opt(str(spec_file), "-p", "default", "--print-ir-after-all")
    assert result.exit_code == 0, result.output
    assert result.stdout == print_module(_lowered())
    dumps = [line for line in result.stderr.splitlines() if line.startswith("// -----//")]
    passes = parse_pipeline(resolve_pipeline("default", module_from_spec(C4A), "sm_90a"))
    before = f"// -----// IR Dump Before {passes[0].spelling()} //----- //"
    assert dumps == [before] + [DUMP.format(p.spelling()) for p in passes] + [DUMP.format("lower-grid")]


def test_print_ir_after_all_starts_with_the_spec_ir() -> None:
    result = _opt("--spec", "c4a", "--print-ir-after-all")
    assert result.exit_code == 0, result.output
    first = result.stderr.split("// -----// IR Dump After", 1)[0]
    assert first.split("//----- //\n", 1)[1].strip() == print_module(module_from_spec(C4A)).strip()


def test_an_empty_pipeline_runs_no_passes() -> None:
    result = _opt("--spec", "c4a", "-p", "", "--print-ir-after-all")
    assert result.exit_code == 0, result.output
    assert result.stdout == print_module(module_from_spec(C4A))  # no schedule filled in
    assert "// -----// IR Dump Before an empty pipeline (no passes) //----- //" in result.stderr
    assert "IR Dump After" not in result.stderr


def test_a_saved_stage_restarts_the_pipeline(tmp_path: Path) -> None:
    half = tmp_path / "half.cir"
    half.write_text(print_module(_lowered(pipeline="thread-map{elems-per-lane=4},vectorize{bits=64}")))
    result = _opt(str(half), "-p", f"lower-reduction,plan-smem,{DEFAULT_FETCH}")
    assert result.exit_code == 0, result.output
    full = f"thread-map{{elems-per-lane=4}},vectorize{{bits=64}},lower-reduction,plan-smem,{DEFAULT_FETCH}"
    assert result.stdout == print_module(_lowered(pipeline=full))


def test_print_ir_after_change_and_time_passes(spec_file: Path) -> None:
    result = _opt(str(spec_file), "-p", "thread-map,thread-map", "--print-ir-after-change", "--time-passes")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("// -----// IR Dump After") == 1
    assert "// ----- Pass execution timing report ----- //" in result.stderr
    assert result.stderr.count(" ms (") == 2


def test_a_file_with_a_parse_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.cir"
    path.write_text("module @m {\n  %x = cc.window $\n}\n")
    assert _error(_opt(str(path))) == f"{path}:2:18: unexpected character '$'\n"


def test_a_file_with_an_illegal_schedule_names_the_op_line(tmp_path: Path) -> None:
    text = print_module(_lowered(pipeline="derived"))
    text = text.replace("group_tree = (4, 2, 1)", "group_tree = (8, 4, 2, 1)")
    path = tmp_path / "bad.cir"
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "cc.quant" in t)
    assert _error(_opt(str(path))) == (
        f"{path}:{line}: cc.quant %q: group_tree=(8, 4, 2, 1): must XOR exactly the masks 1..4 of the group\n"
    )


def test_a_file_with_a_spec_error_names_the_field(tmp_path: Path) -> None:
    module = module_from_spec(C4A)
    bad = replace(module, attrs=tuple((k, 96 if k == "quant_block" else v) for k, v in module.attrs))
    path = tmp_path / "bad.cir"
    path.write_text(print_module(bad))
    message = _error(_opt(str(path)))
    assert message.startswith(
        "module @c4a_h512_q64_r64_bf16: head_size=512: must be a multiple of quant_block=96"
    )


# -- --spec --------------------------------------------------------------------------------------
def test_spec_runs_the_default_pipeline() -> None:
    result = _opt("--spec", "c4a", "--head-size", "512", "--quant-block", "64")
    assert result.exit_code == 0, result.output
    assert result.stdout == print_module(_lowered())
    assert parse_module(result.stdout) == _lowered()
    tail = result.stdout.splitlines()[-1]
    assert tail.startswith("} sched {elems_per_lane = ") and "barriers = 1" in tail
    derived = _opt("--spec", "c4a", "-p", "derived").stdout.splitlines()[-1]
    assert derived.startswith("} sched {elems_per_lane = 8, head_lanes = 64, window_split = 1, threads = 64")
    assert derived.endswith('grid = "runs", ctas_per_sm = 0, rows_per_cta = 4, smem_bytes = 16, '
                            'barriers = 1, min_ctas_per_sm = 4, cache_hints = "stream"}')  # 128 + 60: 4 CTAs


def test_spec_with_options_and_another_pipeline() -> None:
    spec = make_spec("indexer_fp8", weight_dtype="f32")
    result = _opt("--spec", "indexer_fp8", "--weight-dtype", "f32", "-p", "baseline")
    assert result.exit_code == 0, result.output
    assert "module @indexer_fp8_h128_q128_r64_f32 " in result.stdout
    base = resolve_pipeline("baseline", module_from_spec(spec))
    assert "thread-map{elems-per-lane=4,window-split=1" in base
    assert result.stdout == print_module(_lowered(spec, base))
    legal = _opt(
        "--spec",
        "c4a",
        "-p",
        "thread-map{elems-per-lane=4,window-split=2},vectorize,lower-reduction,plan-smem",
    )
    assert legal.exit_code == 0 and "elems_per_lane = 4, head_lanes = 128, window_split = 2" in legal.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--head-size", "500"],
            "invalid head_size=500: must be a multiple of 8 so every row is read with 16-byte fp32 "
            "and bf16 vectors",
        ),
        (
            ["--quant-block", "128"],
            "invalid quant_block=128: must divide the nope width head_size - rope = 448",
        ),
        (
            ["--head-size", "512", "--quant-block", "48"],
            "invalid head_size=512: must be a multiple of quant_block=48 (head_size % quant_block == 0)",
        ),
        (["--rope", "0"], "invalid rope=0: must lie inside the head (0 < rope < head_size=512)"),
    ],
)
def test_an_illegal_variant_names_the_field(args: list[str], message: str) -> None:
    assert _error(_opt("--spec", "c4a", *args)) == message + "\n"


def test_an_illegal_schedule_from_options_is_rejected_by_the_verifier() -> None:
    message = _error(_opt("--spec", "c4a", "-p", "thread-map{elems-per-lane=3}"))
    assert (
        message
        == "module @c4a_h512_q64_r64_bf16: elems_per_lane=3: must be a power of two dividing head=512\n"
    )
    message = _error(_opt("--spec", "indexer_fp8", "-p", "thread-map{elems-per-lane=8,window-split=2}"))
    assert message.startswith(
        "module @indexer_fp8_h128_q128_r64_bf16: head_lanes=16: must be a whole number of warps"
    )


def test_an_unknown_pass_gives_the_column() -> None:
    message = _error(_opt("--spec", "c4a", "-p", "thread-map,vectorise"))
    assert message.splitlines() == [
        "pipeline column 12: unknown pass 'vectorise'; passes: thread-map, vectorize, lower-reduction, "
        "plan-smem, rows-in-flight, page-lookup, rescale, smem-stage, l2-prefetch, operand-loads, "
        "occupancy, cache-hints, overlap-launch, quant-convert, lower-row, lower-grid "
        "(alias: window-prefetch)",
        "  thread-map,vectorise",
        "             ^",
    ]


def test_lower_row_can_be_named_and_changes_no_byte() -> None:
    """lower-row is in the pass list: named after the schedule it lowers the row body (and
    lower-grid, run after it, finds it lowered); named before, it names what is unset."""
    result = _opt("--spec", "c4a", "-p", f"{DEFAULT_PIPELINE},lower-row", "--print-ir-after-all")
    assert result.exit_code == 0, result.output
    assert result.stdout == print_module(_lowered(pipeline="derived"))
    dumps = [line for line in result.stderr.splitlines() if line.startswith("// -----//")]
    assert dumps[-2:] == [DUMP.format("lower-row"), DUMP.format("lower-grid")]
    assert _error(_opt("--spec", "c4a", "-p", "thread-map,lower-row")) == (
        "lower-row cannot lower @c4a_h512_q64_r64_bf16: lower-row needs the whole schedule, and "
        "smem_bytes, rows_in_flight (rows-in-flight) is unset: it runs last (every pipeline ends with "
        "it; do not name it earlier)\n"
    )
    assert pipeline_string(parse_pipeline(f"{DEFAULT_PIPELINE},lower-row,lower-grid")) == DEFAULT_PIPELINE


def test_exactly_one_of_file_or_spec(spec_file: Path) -> None:
    want = "give exactly one of FILE or --spec (e.g. `compressc opt --spec c4a`)\n"
    assert _error(_opt()) == want
    assert _error(_opt(str(spec_file), "--spec", "c4a")) == want


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = _opt(str(tmp_path / "nope.cir"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_vectorize_without_thread_map_is_one_error() -> None:
    assert _error(_opt("--spec", "c4a", "-p", "vectorize{bits=256}")) == (
        "pipeline column 1: bad options of vectorize: vectorize bits=256: must be 32, 64 or 128\n"
        "  vectorize{bits=256}\n  ^\n"
    )
    assert _error(_opt("--spec", "c4a", "-p", "vectorize")) == (
        "vectorize cannot lower @c4a_h512_q64_r64_bf16: vectorize needs the thread map: run thread-map "
        "first, e.g. -p 'thread-map,vectorize'\n"
    )


def test_an_op_attribute_that_contradicts_the_module_is_one_error(spec_file: Path) -> None:
    text = spec_file.read_text()
    spec_file.write_text(text.replace("overlap = true, head = 512", "overlap = true, head = 511"))
    assert _error(_opt(str(spec_file))) == (
        f"{spec_file}:21: cc.window %win: head=511: contradicts the module attributes, which imply head=512\n"
    )


@pytest.mark.parametrize(
    "data", [b"\xff\xfe\x00binary", b"module @m {\x00\x01}", "m\u00e9".encode("latin-1")]
)
def test_a_binary_or_non_utf8_file_is_one_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "kernel.cubin.cir"
    path.write_bytes(data)
    message = _error(_opt(str(path)))
    assert message.startswith(f"{path}: not a .cir text file (")
    assert message.endswith("): give IR text as `compressc opt --spec ...` prints it\n")
