"""`compressc build`: one-line errors with nothing written, a no-op second run, the help text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressc.cache import compile as compile_module
from compressc.cache.store import Store
from compressc.cli import main

ONE = ["--spec", "c4a", "--weight-dtype", "bf16", "-j", "1"]


def run(*args: str):
    return CliRunner().invoke(main, ["build", *args])


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
    assert "c4a_h512_q64_r64_bf16@sm_90a: built" in first.output and "1/1 kernels ready" in first.output
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def no_compiles(jobs, workers, on_done):
        assert list(jobs) == [], "a build with nothing changed started the compiler"

    monkeypatch.setattr(compile_module, "compile_many", no_compiles)
    second = run("--out", str(out), *ONE)
    assert second.exit_code == 0, second.output
    assert "c4a_h512_q64_r64_bf16@sm_90a: cached" in second.output and "built" not in second.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and "locks" not in p.parts} == {
        p: t for p, t in before.items() if "locks" not in p.parts
    }
    (entry,) = Store(out).entries()
    assert (entry.path / "key.json").is_file()


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
