"""`compressc build`: one-line errors with nothing written, a no-op second run, the help text."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressc.cache.store import Store
from compressc.cli import main
from compressc.driver import compile as compile_module
from compressc.passes.manager import DEFAULT_FETCH
from compressc.runtime.resolve import KernelNotFoundError, find_kernel
from compressc.specs import make_spec

ONE = ["--spec", "c4a", "--weight-dtype", "bf16", "-j", "1"]


def run(*args: str):
    return CliRunner().invoke(main, ["build", *args])


def status(output: str, label: str) -> str:
    """The status shown next to `label`'s progress bar."""
    (match,) = re.findall(rf"^  {re.escape(label)}:\s+(\S+)", output, re.M)
    return match


def assert_one_line_error(result, message: str, out: Path, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists(), "a failed build left files behind"


def test_unknown_arch(tmp_path):
    out = tmp_path / "kernels"
    result = run("--arch", "sm42", "--out", str(out), *ONE)
    assert_one_line_error(
        result, "unknown GPU architecture 'sm42': accepted spellings are sm_80, sm_90a", out
    )
    assert len(result.output.splitlines()) == 1


def test_unknown_spec(tmp_path):
    out = tmp_path / "kernels"
    result = run("--spec", "c5a", "--out", str(out))
    assert_one_line_error(result, "Invalid value for '--spec': 'c5a' is not one of 'c4a'", out, exit_code=2)


def test_illegal_head_quant_pair(tmp_path):
    out = tmp_path / "kernels"
    result = run("--spec", "c4a", "--head-size", "512", "--quant-block", "48", "--out", str(out))
    assert_one_line_error(result, "quant_block=48", out)
    assert len(result.output.splitlines()) == 1


def test_missing_build_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] == "cutlass" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "kernels"
    result = run("--out", str(out), *ONE)
    assert_one_line_error(
        result,
        "building kernels needs 'cutlass', which is not installed: pip install 'compressc[build]'",
        out,
    )
    assert len(result.output.splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
def test_second_build_compiles_nothing(tmp_path, monkeypatch):
    out = tmp_path / "kernels"
    first = run("--out", str(out), *ONE)
    assert first.exit_code == 0, first.output
    assert (
        status(first.output, "c4a_h512_q64_r64_bf16@sm_90a") == "built"
        and "1/1 kernels ready" in first.output
    )
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def no_compiles(jobs, workers, on_done):
        assert list(jobs) == [], "a build with nothing changed started the compiler"

    monkeypatch.setattr(compile_module, "compile_many", no_compiles)
    second = run("--out", str(out), *ONE)
    assert second.exit_code == 0, second.output
    assert status(second.output, "c4a_h512_q64_r64_bf16@sm_90a") == "cached" and "built" not in second.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "locks" not in p.parts} == {
        p: t for p, t in before.items() if "locks" not in p.parts
    }
    (entry,) = Store(out).entries()
    assert (entry.path / "key.json").is_file()
    as_json = run("--out", str(out), *ONE, "--json")
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)  # progress went to stderr: stdout is the document alone
    assert doc["out"] == str(out) and doc["seconds"] >= 0
    m = entry.manifest
    assert doc["kernels"] == [{
        "variant": "c4a_h512_q64_r64_bf16", "arch": "sm_90a", "key": entry.key, "status": "cached",
        "path": str(entry.path), "registers": m["registers"], "smem": m["smem_static"] + m["smem_dynamic"],
        "spills": m["spill_stores"] + m["spill_loads"], "compile_seconds": m["compile_seconds"],
    }]


def test_help():
    result = run("--help")
    assert result.exit_code == 0
    text = result.output
    assert "Compile kernels ahead of time into the cache (or --out DIR)." in text
    for option in (
        "--arch",
        "--spec",
        "--head-size",
        "--quant-block",
        "--weight-dtype",
        "--out",
        "-j, --jobs",
    ):
        assert option in text
    assert "compressc build --arch sm90 --arch sm100 -j 2 --out build/kernels" in text
    top = CliRunner().invoke(main, ["--help"])
    for command in ("build", "wheel", "inspect", "cache"):
        assert f"  {command} " in top.output


def test_arch_before_fp8_is_refused(tmp_path):
    out = tmp_path / "kernels"
    result = run("--arch", "sm80", "--out", str(out), *ONE)
    assert_one_line_error(result, "sm_80 cannot run compressc kernels", out)
    assert "need sm_89 or later; build for sm90 (Hopper) or sm100 (Blackwell)" in result.output


@pytest.mark.parametrize(
    "option", [["--head-size", "512"], ["--quant-block", "64"], ["--weight-dtype", "f32"], ["--rope", "32"]]
)
def test_variant_options_need_spec(tmp_path, option):
    out = tmp_path / "kernels"
    result = run("--out", str(out), *option)
    assert_one_line_error(result, f"{option[0]} needs --spec (without it the default matrix is built)", out)


def test_bad_jobs_variable_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSC_JOBS", "many")
    out = tmp_path / "kernels"
    result = run("--out", str(out), *ONE[:-2])
    assert_one_line_error(result, "COMPRESSC_JOBS='many' is not a positive integer", out)


def test_missing_nvjitlink_wheel_names_the_pip_command(tmp_path, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(dist):
        if dist == "nvidia-nvjitlink":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    out = tmp_path / "kernels"
    result = run("--out", str(out), *ONE)
    assert_one_line_error(result, "nvidia-nvjitlink is not installed", out)
    assert "pip install 'compressc[build]'" in result.output


def test_failed_variant_prints_the_command_that_reproduces_it(tmp_path, monkeypatch):
    from compressc.driver.compile import CompileError

    def failing(jobs, workers, on_done):
        for key, _source, arch in jobs:
            on_done(key, CompileError(f"ptxas rejected [the kernel] for {arch}"))

    monkeypatch.setattr(compile_module, "compile_many", failing)
    out = tmp_path / "kernels dir"
    result = run(
        "--out",
        str(out),
        "-p",
        f"thread-map{{elems-per-lane=4}},vectorize{{bits=64}},lower-reduction,plan-smem,{DEFAULT_FETCH}",
        *ONE,
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "error c4a_h512_q64_r64_bf16@sm_90a: ptxas rejected [the kernel] for sm_90a" in result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("  reproduce: ")]
    command = line.removeprefix("  reproduce: ")
    assert command.startswith(
        "compressc build --arch sm_90a --spec c4a --head-size 512 --quant-block 64 "
        "--weight-dtype bf16 -j 1 -p "
    )
    import shlex

    again = run(*shlex.split(command)[2:])  # the same single variant, pipeline and --out
    assert again.exit_code == 1 and again.output.count("reproduce: ") == 1
    assert f"  reproduce: {command}" in again.output
    assert Store(out).entries() == [] and Store(out).verify() == []


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
def test_arch_spellings_and_several_archs_compile(tmp_path):
    """sm90, sm_90, 90a are one target; sm100 compiles too (a compile-only proof without a GPU)."""
    out = tmp_path / "kernels"
    spellings = ["--arch", "sm90", "--arch", "sm_90", "--arch", "90a", "--arch", "sm_90a", "--arch", "sm100"]
    result = run(*spellings, "--spec", "c128a_store", "--weight-dtype", "bf16", "-j", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2/2 kernels ready" in result.output
    for arch in ("sm_90a", "sm_100a"):
        assert status(result.output, f"c128a_store_h512_q64_r64_bf16@{arch}") == "built"
    # The summary table: variant, arch, regs, smem, spills, compile s, status, variant names whole.
    row = [
        ln
        for ln in result.output.splitlines()
        if "│ c128a_store_h512_q64_r64_bf16 " in ln and "sm_100a" in ln
    ]
    assert len(row) == 1 and row[0].rstrip().endswith("built  │")
    archs = sorted(e.manifest["arch"] for e in Store(out).entries())
    assert archs == ["sm_100a", "sm_90a"]
    from compressc.driver.cubin import read_cubin

    by_arch = {
        e.manifest["arch"]: read_cubin(e.cubin_bytes(), e.manifest["entry"]) for e in Store(out).entries()
    }
    assert {a: info.arch for a, info in by_arch.items()} == {"sm_90a": "sm_90a", "sm_100a": "sm_100a"}


@pytest.mark.skipif(importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]")
@pytest.mark.parametrize("damage", ["truncate cubin", "garbage manifest", "no manifest"])
def test_corrupt_entry_is_rebuilt_and_reported(tmp_path, damage):
    out = tmp_path / "kernels"
    one = ["--spec", "c128a_store", "--weight-dtype", "bf16", "-j", "1", "--out", str(out)]
    assert run(*one).exit_code == 0
    (entry,) = Store(out).entries()
    if damage == "truncate cubin":
        (entry.path / "kernel.cubin").write_bytes(entry.cubin_bytes()[:100])
    elif damage == "garbage manifest":
        (entry.path / "manifest.json").write_text("{")
    else:
        (entry.path / "manifest.json").unlink()
    assert Store(out).get(entry.key) is None  # a miss, never loaded
    result = run(*one)
    assert result.exit_code == 0, result.output
    label = "c128a_store_h512_q64_r64_bf16@sm_90a"
    assert re.search(rf"^  {re.escape(label)}:\s+rebuilt \(corrupt entry replaced\)", result.output, re.M)
    assert re.search(r"│ c128a_store_h512_q64_r64_bf16 .*│ rebuilt │", result.output)
    assert Store(out).verify() == [] and Store(out).get(entry.key).cubin_bytes() == entry.cubin_bytes()


def test_read_only_output_fails_before_compiling(tmp_path, monkeypatch):
    import os

    out = tmp_path / "kernels"
    out.mkdir()
    real = os.access

    def access(path, mode, **kwargs):  # as for a user without write permission
        return False if Path(path) == out and mode & os.W_OK else real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)

    def no_compiles(jobs, workers, on_done):
        raise AssertionError("compiled into a read-only directory")

    monkeypatch.setattr(compile_module, "compile_many", no_compiles)
    result = run("--out", str(out), *ONE)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(
        f"Error: {out} is read-only and lacks 1 kernel(s) (c4a_h512_q64_r64_bf16@sm_90a)"
    )
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "spec",
    [make_spec("c4a", 512, 32, rope=32, weight_dtype="f32"), make_spec("indexer_fp8", weight_dtype="bf16"),
     # every axis the command must name: the format, the rotation, csa's indexer, the checked build
     make_spec("c4a", cache_format="full_bf16"), make_spec("indexer_mxfp4", rotate=True),
     make_spec("csa", indexer="indexer_mxfp4"),
     make_spec("c128a_store", cache_format="full_fp8", bounds=True)],
    ids=lambda s: s.variant,
)
def test_the_not_found_hint_is_a_build_command_that_works(tmp_path, monkeypatch, spec):
    """KernelNotFoundError's `compressc build ...` line, run as printed, builds that very variant."""
    with pytest.raises(KernelNotFoundError) as err:
        find_kernel(spec, "sm_90a", pack_roots=[], cache_dir=tmp_path / "none", allow_jit=False)
    lines = [ln.strip() for ln in str(err.value).splitlines()]
    (command,) = [ln for ln in lines if ln.startswith("compressc build")]
    seen = []

    def record(jobs, workers, on_done):
        for key, source, arch in jobs:
            seen.append((arch, source))
            on_done(key, RuntimeError("stop here"))

    monkeypatch.setattr(compile_module, "compile_many", record)
    out = tmp_path / "kernels"
    result = run(*shlex.split(command)[2:], "--out", str(out))
    assert result.exit_code == 1 and "Usage:" not in result.output, result.output
    assert f"error {spec.variant}@sm_90a: stop here" in result.stderr  # one kernel: exactly this one
    assert len(seen) == 1 and seen[0][0] == "sm_90a" and f"cutlass_{spec.variant}" in seen[0][1]
    assert f"  reproduce: {command} -j 1 --out {out}" in result.stderr


def test_build_json_reports_a_failed_variant(tmp_path, monkeypatch):
    def failing(jobs, workers, on_done):
        for key, _source, _arch in jobs:
            on_done(key, RuntimeError("ptxas said no"))

    monkeypatch.setattr(compile_module, "compile_many", failing)
    out = tmp_path / "kernels"
    result = run("--out", str(out), *ONE, "--json")
    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)["kernels"]
    assert (row["variant"], row["status"]) == ("c4a_h512_q64_r64_bf16", "failed")
    assert row["error"] == "ptxas said no"
    assert row["reproduce"].startswith("compressc build --arch sm_90a --spec c4a ")
    assert f"  reproduce: {row['reproduce']}" in result.stderr


def test_wheel_takes_every_variant_axis_too():
    result = CliRunner().invoke(main, ["wheel", "--help"])
    for option in ("--spec", "--head-size", "--quant-block", "--weight-dtype", "--rope"):
        assert option in result.output


def test_unwritable_cache_dir_fails_before_compiling(tmp_path, monkeypatch):
    def no_compiles(jobs, workers, on_done):
        raise AssertionError("compiled although nothing can be stored")

    monkeypatch.setattr(compile_module, "compile_many", no_compiles)
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(main, ["build", *ONE], env={"COMPRESSC_CACHE_DIR": str(blocker / "cache")})
    assert result.exit_code == 1 and "Traceback" not in result.output and result.stdout == ""
    assert result.stderr == (
        f"Error: {blocker / 'cache'} is not writable (Not a directory) and lacks 1 kernel(s) "
        "(c4a_h512_q64_r64_bf16@sm_90a): build into a writable directory with --out DIR or "
        "COMPRESSC_CACHE_DIR\n"
    )
    assert "reproduce" not in result.output


@pytest.mark.parametrize(
    "command",
    [[], ["build"], ["wheel"], ["inspect"], ["emit"], ["opt"], ["cache"]]
    + [["cache", c] for c in ("ls", "verify", "prune", "clear", "why")]
    + [["show-config"], ["tune"]],
    ids=lambda c: " ".join(c) or "compressc",
)
def test_every_help_teaches_by_example(command):
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=120)
    assert result.exit_code == 0
    assert "compressc " + " ".join(command) in result.output.replace("  ", " ") or not command
    assert re.search(r"^\s+compressc \S+", result.output, re.M), "no example command line"
    if command in ([], ["cache"], ["build"]):
        assert "COMPRESSC_CACHE_DIR" in result.output
    if not command:
        assert "COMPRESSC_NO_JIT" in result.output and "COMPRESSC_JOBS" in result.output
