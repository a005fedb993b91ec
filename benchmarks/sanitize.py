"""compute-sanitizer over every shipped kernel on small cases, one call (issue 17, GPU host).

    COMPRESSC_CACHE_DIR=$PWD/build/kernels COMPRESSC_SCHEDULES_DIR=$PWD/build/kernels-schedules \\
        COMPRESSC_NO_JIT=1 PYTHONPATH=. python benchmarks/sanitize.py --out $OUT/sanitize.json

Collects tests/gpu, keeps the SELECTION (every variant of the default matrix, every grid: runs,
rows, wave, forced multi-row runs, clusters, the L2 prefetch; the checked builds; T <= 64), and
runs pytest on it under each tool (memcheck, racecheck, synccheck, initcheck by default) with a
timeout, `--error-exitcode` and a log file of its own. One line per tool: tests run, passed,
failed, sanitizer errors; everything in a JSON document.

Known noise, accounted for: tests that provoke driver errors on purpose (an invalid image, a
missing entry, a launch from a thread without the context) are never selected (EXCLUDED says
why); an error record naming cuGetProcAddress (cuda-bindings' lazy lookup of entry points newer
than the driver; compressc's loader uses ctypes, runtime/cudriver.py) is counted as noise, not
as an error. memcheck and initcheck run with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so every tensor is
its own allocation and an access past its end is seen (the caching allocator's slack would hide
it); CUDA graph capture needs the caching allocator, so those tools leave the graph tests to the
other two. racecheck, synccheck and initcheck instrument only compressc's kernels (entry names
`cutlass_*`): torch's reference kernels are not the subject and would take most of the time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# (node id pattern, what it covers); T <= 64 everywhere
SELECTION = (
    (r"test_ops_gpu\.py::test_fused_matches_reference\[.*-mixed-64\]",
     "c4a in every format, both indexers rotated or not, both weights (runs and rows grids)"),
    (r"test_ops_gpu\.py::test_c128a_matches_reference\[.*-decode-64\]",
     "c128a_compress and c128a_store in every format (wave grid, the overlapped store launch)"),
    (r"test_ops_gpu\.py::test_c128a_in_cuda_graph_with_reserved_scratch$", "C128A in a CUDA graph"),
    (r"test_ops_gpu\.py::test_zero_rows_write_nothing$", "an empty launch"),
    (r"test_small_grids_gpu\.py::", "forced multi-row runs and waves (T = 64)"),
    (r"test_schedules_gpu\.py::test_schedule_matches_reference\[.*-decode-64\]",
     "clusters of 2/4/8 over DSMEM and the L2 prefetch"),
    (r"test_csa_gpu\.py::test_fused_matches_reference\[.*-mixed-64\]", "the 4 shipped csa pairs"),
    (r"test_ring_gpu\.py::test_ring_compress_then_store_matches_the_reference\[.*-mixed-7\]",
     "c128a_compress_ring then c128a_store"),
    (r"test_online_gpu\.py::test_merge_writes_only_its_rows_and_matches_the_reference\[.*-37\]",
     "c128a_online"),
    (r"test_online_gpu\.py::test_step_writes_the_reference_cache_bytes\[37-.*\]", "c128a_online + store"),
    (r"test_bounds_kernel_gpu\.py::", "the checked builds: c4a eager, a skipped row, a graph replay; one of "
     "each other kernel"),
    (r"test_head_sizes_gpu\.py::.*-decode-64\]", "the other head sizes"),
    (r"test_c128a_split_gpu\.py::test_split_matches_reference\[.*-decode-32\]",
     "c128a_split (the workspace merge), both weights"),
    (r"test_c128a_split_cluster_gpu\.py::test_cluster_merge_matches_reference\[.*cluster-split=8.*-f32-decode-32\]",
     "c128a_split's cluster merge (the DSMEM exchange; a tune candidate, not shipped)"),
)
EXCLUDED = (
    (r"test_ops_gpu\.py::test_loader_", "provoke driver errors on purpose (invalid image, missing entry)"),
    (r"::test_launch_from_a_new_thread$|::test_new_thread_gets_the_context$",
     "a launch on a thread without the context fails once, then is retried"),
    (r"test_vllm_gpu\.py::", "vLLM's dispatchers over the same kernels; a host-time test"),
)
GRAPH = re.compile(r"graph")  # CUDA graph tests: not with PYTORCH_NO_CUDA_MEMORY_CACHING
TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
EXACT_ALLOCATIONS = ("memcheck", "initcheck")
KERNEL_FILTER = "kns=cutlass_"  # compressc's entries (compressc.ir.launch.entry_name)
NOISE = (("cuGetProcAddress", "cuda-bindings' lazy driver entry lookup"),)
ERROR_EXIT = 86
_RESULT = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) error")
# racecheck prints no ERROR SUMMARY: its hazards (errors and warnings alike) are its errors here
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
_PREFIX = "========= "


def select(node_ids: list[str]) -> list[str]:
    """The selected node ids, in collection order; never an excluded one."""
    keep = [n for n in node_ids if any(re.search(p, n) for p, _ in SELECTION)]
    return [n for n in keep if not any(re.search(p, n) for p, _ in EXCLUDED)]


def only(node_ids: list[str], wanted: list[str]) -> list[str]:
    """The selected node ids that `wanted` names; SystemExit naming any it names that is not selected."""
    named = set(wanted)
    stray = sorted(named - set(node_ids))
    if stray:
        raise SystemExit(f"--only names {len(stray)} node ids outside the selection, e.g. {stray[0]}")
    return [n for n in node_ids if n in named]


def for_tool(tool: str, node_ids: list[str]) -> list[str]:
    """The node ids a tool runs: the graph tests are left out where allocations are exact."""
    if tool not in EXACT_ALLOCATIONS:
        return node_ids
    return [n for n in node_ids if not GRAPH.search(n.split("::", 1)[1])]


def collect(root: Path) -> list[str]:
    """Every GPU test's node id (collection needs no GPU)."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu",
                          "--collect-only", "-q", "tests/gpu"], cwd=root, capture_output=True,
                         text=True, check=False)
    return [line.strip() for line in out.stdout.splitlines() if "::" in line]


@dataclass
class Tests:
    run: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0


def parse_pytest(text: str) -> Tests:
    """Per-test outcomes from pytest -v output (complete up to a timeout)."""
    tests = Tests()
    for line in text.splitlines():
        match = _RESULT.match(line)
        if match is None:
            continue
        node, outcome = match.groups()
        tests.run += 1
        tests.passed += outcome in ("PASSED", "XFAIL")
        tests.skipped += outcome == "SKIPPED"
        if outcome in ("FAILED", "ERROR", "XPASS"):
            tests.failed.append(node)
    return tests


@dataclass
class Findings:
    summary: int | None  # the tool's ERROR SUMMARY count, None when it never printed one
    noise: dict[str, int]
    records: list[str]  # the first line of every record not counted as noise

    @property
    def errors(self) -> int | None:
        """Errors that are not noise; None when the run ended before its summary."""
        if self.summary is None:
            return None
        return max(self.summary - sum(self.noise.values()), len(self.records))


def _records(log: str) -> list[list[str]]:
    """The log's records: a line `========= text`, then its indented continuation lines."""
    records: list[list[str]] = []
    for line in log.splitlines():
        if not line.startswith(_PREFIX.rstrip()):
            continue
        text = line[len(_PREFIX):] if line.startswith(_PREFIX) else ""
        if text and not text.startswith(" "):
            records.append([text])
        elif text.strip() and records:
            records[-1].append(text.strip())
    return records


_INFO = re.compile(r"^(COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|"
                   r"Target application returned|Error: process didn't terminate)")


def parse_sanitizer(log: str) -> Findings:
    race = [int(m[1]) + int(m[2]) for m in _RACE_SUMMARY.finditer(log)]
    summaries = race or [int(m[1]) for m in _SUMMARY.finditer(log)]  # one of the two, never both
    noise = {name: 0 for name, _ in NOISE}
    real = []
    for record in _records(log):
        if _INFO.match(record[0]):
            continue
        whole = " ".join(record)
        name = next((n for n, _ in NOISE if n in whole), None)
        if name is not None:
            noise[name] += 1
        else:
            real.append(record[0])
    return Findings(sum(summaries) if summaries else None, noise, real)


def sanitizer() -> str:
    found = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(found):
        raise SystemExit("compute-sanitizer not found on PATH or in /usr/local/cuda/bin")
    return found


def command(tool: str, exe: str, log: Path, node_ids: list[str], filtered: bool) -> list[str]:
    cmd = [exe, "--tool", tool, "--error-exitcode", str(ERROR_EXIT), "--log-file", str(log)]
    if tool == "memcheck":
        cmd += ["--leak-check", "no"]
    if filtered:
        cmd += ["--kernel-name", KERNEL_FILTER]
    return cmd + [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "-v",
                  "--no-header", "-rN", *node_ids]


def run_with_timeout(cmd: list[str], env: dict, timeout: float, cwd: Path) -> tuple[int | None, str]:
    """(exit status or None on a timeout, stdout); the whole process group is ended on a timeout."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        return None, out


@dataclass
class ToolRun:
    tool: str
    selected: int
    seconds: float
    exit_status: int | None
    timed_out: bool
    tests: Tests
    findings: Findings
    log: str
    filtered: bool = True  # only compressc's kernels instrumented (not for memcheck)
    output_tail: str = ""

    def line(self) -> str:
        t, f = self.tests, self.findings
        errors = "no summary (ended early)" if f.errors is None else f"{f.errors} errors"
        noise = ", ".join(f"{n} {k}" for k, n in f.noise.items() if n) or "none"
        end = "TIMED OUT" if self.timed_out else f"exit {self.exit_status}"
        scope = "compressc kernels" if self.filtered else "all kernels"
        return (f"{self.tool} ({scope}): {t.run}/{self.selected} tests run, {t.passed} passed, "
                f"{len(t.failed)} failed, {t.skipped} skipped; sanitizer: {errors} (noise: {noise}); "
                f"{self.seconds:.0f} s, {end}")

    def ok(self) -> bool:
        t = self.tests
        return (not self.timed_out and self.findings.errors == 0 and not t.failed and not t.skipped
                and t.run == self.selected)


def run_tool(tool: str, node_ids: list[str], args: argparse.Namespace, root: Path, timeout: float) -> ToolRun:
    """One tool over the selection; a sanitizer that refuses the kernel filter (no test ran within
    a minute) is run again without it."""
    filtered = not args.all_kernels and tool != "memcheck"
    run = _run_once(tool, node_ids, args, root, timeout, filtered)
    if filtered and run.tests.run == 0 and not run.timed_out and run.seconds < 60:
        run = _run_once(tool, node_ids, args, root, timeout - run.seconds, False)
    return run


def _run_once(tool: str, node_ids: list[str], args: argparse.Namespace, root: Path, timeout: float,
              filtered: bool) -> ToolRun:
    ids = for_tool(tool, node_ids)
    log = Path(args.logs) / f"sanitize_{tool}.log"
    env = dict(os.environ)
    if tool in EXACT_ALLOCATIONS:
        env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    started = time.monotonic()
    status, out = run_with_timeout(command(tool, args.sanitizer, log, ids, filtered), env, timeout, root)
    seconds = time.monotonic() - started
    (Path(args.logs) / f"sanitize_{tool}.pytest.txt").write_text(out)
    text = log.read_text(errors="replace") if log.exists() else ""
    return ToolRun(tool, len(ids), seconds, status, status is None, parse_pytest(out),
                   parse_sanitizer(text), str(log), filtered, out[-2000:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated compute-sanitizer tools")
    parser.add_argument("--timeout", type=float, default=230, help="seconds per tool")
    parser.add_argument("--budget", type=float, default=560, help="seconds for all tools; a tool "
                        "that would start with less than 60 s left is skipped")
    parser.add_argument("--out", default="benchmarks/results/sanitize.json")
    parser.add_argument("--logs", default=None, help="directory of the logs (default: next to --out)")
    parser.add_argument("--all-kernels", action="store_true", help="instrument torch's kernels too")
    parser.add_argument("--list", action="store_true", help="print the selection and exit")
    parser.add_argument("--only", default=None, metavar="FILE",
                        help="run only the selected node ids listed in FILE (one a line; e.g. the part of "
                        "the selection an earlier run's timeout left out)")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    node_ids = select(collect(root))
    if args.only is not None:
        lines = Path(args.only).read_text().splitlines()
        node_ids = only(node_ids, [line.strip() for line in lines if line.strip()])
    if args.list:
        print("\n".join(node_ids))
        return 0
    args.sanitizer, args.logs = sanitizer(), args.logs or str(Path(args.out).parent)
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    runs, skipped, deadline = [], [], time.monotonic() + args.budget
    for tool in [t for t in args.tools.split(",") if t]:
        left = deadline - time.monotonic()
        if left < 60:
            skipped.append(tool)
            print(f"{tool}: skipped ({left:.0f} s of the budget left)", flush=True)
            continue
        runs.append(run_tool(tool, node_ids, args, root, min(args.timeout, left)))
        print(runs[-1].line(), flush=True)
    report = {"selected": node_ids, "selection": [list(s) for s in SELECTION],
              "excluded": [list(e) for e in EXCLUDED], "skipped_tools": skipped,
              "tools": [asdict(r) | {"errors": r.findings.errors, "ok": r.ok()} for r in runs]}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if runs and all(r.ok() for r in runs) and not skipped else 1


if __name__ == "__main__":
    raise SystemExit(main())
