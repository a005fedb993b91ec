"""benchmarks/sanitize.py on the CPU: its selection covers the default matrix, its parsers read
compute-sanitizer's and pytest's output, its timeout ends the process group (issue 17)."""

from __future__ import annotations

import json
import re
import stat
import sys
import time
from pathlib import Path

from benchmarks import sanitize
from compressc.specs.matrix import default_specs

ROOT = Path(__file__).resolve().parents[1]
NOISE_RECORD = """========= Program hit CUDA_ERROR_INVALID_VALUE (error 1) due to "invalid argument" \
on CUDA API call to cuGetProcAddress_v2.
=========     Saved host backtrace up to driver entry point at error
=========         Host Frame: cydriver.cpython-312-x86_64-linux-gnu.so
=========
"""
WRITE_RECORD = """========= Invalid __global__ write of size 16 bytes
=========     at kernel_cutlass_c4a_h512_q64_r64_bf16_0+0x1a40
=========     by thread (3,0,0) in block (7,0,0)
=========     Address 0x7f0000001000 is out of bounds
=========
"""


def _log(*records: str, summary: int | None) -> str:
    tail = "" if summary is None else f"========= ERROR SUMMARY: {summary} errors\n"
    return "========= COMPUTE-SANITIZER\n" + "".join(records) + tail


def test_the_selection_covers_every_default_variant_and_no_excluded_test():
    collected = sanitize.collect(ROOT)
    selected = sanitize.select(collected)
    assert 30 <= len(selected) <= 80, len(selected)
    by_name = [v.variant for v in default_specs() if not any(f"[{v.variant}-" in n for n in selected)]
    # not parametrized by variant: the paged compress kernel, the ring, the online merge and the
    # split kernel (its tests are parametrized by weight: both variants, test_split_matches_reference)
    assert sorted(by_name) == ["c128a_compress_h512_q64_r64_f32", "c128a_compress_ring_h512_q64_r64_f32",
                               "c128a_online_h512_q64_r64_f32", "c128a_split_h512_q64_r64_bf16",
                               "c128a_split_h512_q64_r64_f32"]
    assert sum("test_split_matches_reference[" in n for n in selected) == 2
    for test in ("test_c128a_matches_reference", "test_ring_compress_then_store", "test_merge_writes",
                 "test_schedule_matches_reference", "test_runs_grid_small", "test_wave_grid_small",
                 "test_a_graph_replay_records"):
        assert any(test in n for n in selected), test
    excluded = [n for n in collected if any(re.search(p, n) for p, _ in sanitize.EXCLUDED)]
    assert any("test_loader_errors_name_the_call" in n for n in excluded)  # the exclusions are not stale
    assert any("test_launch_from_a_new_thread" in n for n in excluded)
    assert not set(excluded) & set(selected)
    sizes = [int(m[1]) for n in selected if (m := re.search(r"-(\d+)\]$", n))]
    assert sizes and max(sizes) <= 64


def test_exact_allocation_tools_leave_the_graph_tests_out():
    ids = ["tests/gpu/test_ops_gpu.py::test_c128a_in_cuda_graph_with_reserved_scratch",
           "tests/gpu/test_small_grids_gpu.py::test_runs_grid_small[c4a_h512_q64_r64_bf16-3]"]
    assert sanitize.for_tool("memcheck", ids) == ids[1:]
    assert sanitize.for_tool("racecheck", ids) == ids


def test_noise_is_counted_apart_from_errors():
    clean = sanitize.parse_sanitizer(_log(*[NOISE_RECORD] * 34, summary=34))
    assert (clean.errors, clean.noise, clean.records) == (0, {"cuGetProcAddress": 34}, [])
    dirty = sanitize.parse_sanitizer(_log(NOISE_RECORD, WRITE_RECORD, NOISE_RECORD, summary=3))
    assert dirty.errors == 1 and dirty.records == ["Invalid __global__ write of size 16 bytes"]
    assert sanitize.parse_sanitizer(_log(WRITE_RECORD, summary=None)).errors is None  # ended early


RACE_RECORD = """========= Error: Race reported between Write access at kernel_cutlass_c4a_0+0x310
=========     and Read access at kernel_cutlass_c4a_0+0x3a0 [128 hazards]
=========
"""


def test_racecheck_summary_counts_its_hazards():
    """racecheck ends with RACECHECK SUMMARY, not ERROR SUMMARY (session 8 read it as 'ended early')."""
    clean = ("========= COMPUTE-SANITIZER\n"
             "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
    assert sanitize.parse_sanitizer(clean).errors == 0
    dirty = ("========= COMPUTE-SANITIZER\n" + RACE_RECORD
             + "========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)\n")
    found = sanitize.parse_sanitizer(dirty)
    assert found.errors == 2 and found.records[0].startswith("Error: Race reported between Write")


def test_pytest_outcomes_are_read_per_test():
    out = ("tests/gpu/a.py::t[x-1] PASSED                [ 33%]\n"
           "tests/gpu/a.py::t[x-2] FAILED                [ 66%]\n"
           "tests/gpu/b.py::u SKIPPED (no CUDA device)  [100%]\n"
           "=== 1 failed, 1 passed, 1 skipped in 2.0s ===\n")
    tests = sanitize.parse_pytest(out)
    assert (tests.run, tests.passed, tests.failed, tests.skipped) == (3, 1, ["tests/gpu/a.py::t[x-2]"], 1)


def test_a_timeout_ends_the_whole_process_group(tmp_path):
    started = time.monotonic()
    status, _ = sanitize.run_with_timeout(["sh", "-c", "sleep 60 & sleep 60"], {}, 1, tmp_path)
    assert status is None and time.monotonic() - started < 20


FAKE_SANITIZER = """#!{python}
import subprocess, sys
args = sys.argv[1:]
if "--kernel-name" in args and "{refuse}" == "yes":
    sys.exit("compute-sanitizer: unrecognised option '--kernel-name'")
log = args[args.index("--log-file") + 1]
rest = args[args.index("{python}"):]
rc = subprocess.run(rest).returncode
open(log, "w").write("========= COMPUTE-SANITIZER\\n{record}========= ERROR SUMMARY: 1 errors\\n")
sys.exit(rc)
"""


def _fake_sanitizer(tmp_path, refuse_filter: bool = False) -> Path:
    fake = tmp_path / "compute-sanitizer"
    record = NOISE_RECORD.replace('"', '\\"').replace("\n", "\\n")
    refuse = "yes" if refuse_filter else "no"
    fake.write_text(FAKE_SANITIZER.format(python=sys.executable, record=record, refuse=refuse))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def test_main_runs_each_tool_and_writes_the_report(tmp_path, monkeypatch, capsys):
    fake = _fake_sanitizer(tmp_path)
    one = "tests/gpu/test_ops_gpu.py::test_zero_rows_write_nothing"
    monkeypatch.setattr(sanitize, "collect", lambda root: [one, "tests/gpu/test_ops_gpu.py::test_loader_x"])
    monkeypatch.setattr(sanitize, "sanitizer", lambda: str(fake))
    out = tmp_path / "sanitize.json"
    status = sanitize.main(["--tools", "memcheck,racecheck", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("memcheck (all kernels): 1/1 tests run, 0 passed, 0 failed, 1 skipped; "
                               "sanitizer: 0 errors (noise: 1 cuGetProcAddress)")
    assert lines[1].startswith("racecheck (compressc kernels): 1/1 tests run")
    report = json.loads(out.read_text())
    assert report["selected"] == [one] and [t["tool"] for t in report["tools"]] == ["memcheck", "racecheck"]
    assert status == 1  # a skipped test (no GPU here) is not a clean run


def test_a_refused_kernel_filter_is_run_again_without_it(tmp_path, monkeypatch, capsys):
    fake = _fake_sanitizer(tmp_path, refuse_filter=True)
    one = "tests/gpu/test_ops_gpu.py::test_zero_rows_write_nothing"
    monkeypatch.setattr(sanitize, "collect", lambda root: [one])
    monkeypatch.setattr(sanitize, "sanitizer", lambda: str(fake))
    sanitize.main(["--tools", "racecheck", "--out", str(tmp_path / "s.json")])
    assert capsys.readouterr().out.startswith("racecheck (all kernels): 1/1 tests run")
