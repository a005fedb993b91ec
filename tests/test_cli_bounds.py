"""`--bounds` (and `--indexer`) on every command of the variant option group: the checked builds
(KernelSpec.bounds, docs/kernels.md §3 "Checked builds") named from the command line (issue 17)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from compressc.cli import main
from compressc.cli.build import checked_default_specs
from compressc.driver import compile as compile_module
from compressc.specs.family import CHECKED_KERNELS
from compressc.specs.matrix import default_specs


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", ["build", "wheel", "opt", "emit"])
def test_help_says_what_a_checked_build_is_and_how_it_is_served(command):
    text = " ".join(invoke(command, "--help").output.split())
    assert "--bounds" in text and "--indexer" in text
    for words in ("The checked build (variant suffix _bounds", "skipped and recorded",
                  "COMPRESSC_CHECK_BOUNDS=kernel", "COMPRESSC_CHECK_BOUNDS=1 checks them on the host"):
        assert words in text, words


@pytest.mark.parametrize(
    "args, text",
    [
        (["--spec", "c128a_online"], "--bounds: c128a_online has no checked build: the kernel-side checks "
                                     "are for the paged kernels (c4a, c128a_compress, c128a_store"),
        (["--spec", "c128a_compress", "--state-layout", "ring"],
         "--bounds: c128a_compress with the ring state has no checked build"),
        (["--spec", "csa"],
         "--bounds: csa has no checked build: COMPRESSC_CHECK_BOUNDS=1 (or =kernel) checks its index values"),
    ],
)
@pytest.mark.parametrize("command", ["build", "opt"])
def test_a_kernel_without_a_checked_build_is_one_error(tmp_path, command, args, text):
    extra = ["--out", str(tmp_path / "k")] if command == "build" else []
    result = invoke(command, *args, "--bounds", *extra)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert text in line and "COMPRESSC_CHECK_BOUNDS=1" in line
    assert not (tmp_path / "k").exists()


def test_opt_and_emit_show_the_checked_kernel():
    lowered = invoke("opt", "--spec", "indexer_fp8", "--bounds").output
    assert "cc.bounds" in lowered and '"bounds_error"' in lowered
    assert "cc.bounds" not in invoke("opt", "--spec", "indexer_fp8").output
    source = invoke("emit", "--spec", "c4a", "--bounds").output
    assert "ops.record_bounds_error" in source and "cutlass_c4a_h512_q64_r64_bf16_bounds" in source


def _planned(monkeypatch, tmp_path, *args: str) -> list[str]:
    seen: list[str] = []

    def record(jobs, workers, on_done):
        for key, source, _arch in jobs:
            seen.append(source)
            on_done(key, RuntimeError("stop here"))

    monkeypatch.setattr(compile_module, "compile_many", record)
    result = invoke("build", "--out", str(tmp_path / "k"), "-j", "1", *args)
    assert result.exit_code == 1, result.output
    return seen


def test_build_bounds_with_spec_builds_the_checked_variants(tmp_path, monkeypatch):
    seen = _planned(monkeypatch, tmp_path, "--spec", "c128a_store", "--cache-format", "full_bf16", "--bounds")
    assert len(seen) == 2  # both weight dtypes
    assert all("_full_bf16_bounds" in s and "ops.record_bounds_error" in s for s in seen)


def test_build_bounds_alone_is_every_default_variant_that_has_a_checked_build():
    specs = checked_default_specs()
    want = [s for s in default_specs() if s.kernel in CHECKED_KERNELS and s.state_layout == "paged"]
    assert [s.variant for s in specs] == [f"{s.variant}_bounds" for s in want]
    assert len(specs) == 21 and {s.kernel for s in specs} == set(CHECKED_KERNELS)


def test_indexer_is_for_csa_only():
    result = invoke("opt", "--spec", "c4a", "--indexer", "indexer_mxfp4")
    assert result.exit_code == 1 and "is only for the csa kernel (drop --indexer)" in result.output
    assert "idxmxfp4" in invoke("emit", "--spec", "csa", "--indexer", "indexer_mxfp4").output
