"""benchmarks/host_path.py on a CPU host: its arguments, errors, timing helper, results JSON,
and the vLLM-shaped calls it times (launched here into a stand-in kernel)."""

from __future__ import annotations

import json

import pytest
import torch
from test_runtime_ops import FakeKernel

from benchmarks import host_path
from compressc.integrations import vllm as plugin
from compressc.runtime import ops


def test_without_a_gpu_it_says_so(capsys):
    assert host_path.main([]) == 2
    assert capsys.readouterr().err == "host_path.py: needs a CUDA GPU: torch.cuda.is_available() is False\n"


def test_argument_errors(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        host_path.parse_args(["--calls", "5000"])
    assert "--calls 5000: use 1..1000 (more would fill the driver's launch queue)" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = host_path.parse_args(["--kernels", str(tmp_path / "none")])
    with pytest.raises(host_path.BenchError, match=r"--kernels .*none: no such directory"):
        host_path.check_environment(args)


def test_results_json_keeps_other_rows(tmp_path):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"gpu": "H200", "rows": [{"kernel": "c4a", "us": 1.0},
                                                       {"kernel": "host_enqueue", "host_us": 99.0}]}))
    new = [host_path.row("c4a", "ops", 1, 3.214, 4.0, 500)]
    host_path.merge_rows(out, new, {"gpu": "H200"})
    data = json.loads(out.read_text())
    want = {"kernel": "host_enqueue", "op": "c4a", "impl": "ops", "T": 1, "host_us": 3.21, "gpu_us": 4.0,
            "calls": 500}
    assert data["rows"] == [{"kernel": "c4a", "us": 1.0}, want]
    assert data["gpu"] == "H200" and data["host_path"] == {"gpu": "H200"}
    out.write_text("[]")
    with pytest.raises(host_path.BenchError, match="is not a results JSON object"):
        host_path.merge_rows(out, new, {})


def test_host_time_per_call():
    batches = []
    us = host_path.host_us(lambda: None, calls=100, repeat=3, busy=lambda: batches.append(1))
    assert batches == [1, 1, 1] and 0 < us < 1000


@pytest.mark.parametrize("op", host_path.OPS)
def test_the_timed_calls_reach_the_kernels(op, monkeypatch):
    log = []
    monkeypatch.setattr(ops, "check_device", lambda tensors: torch.device("cuda", 0))
    monkeypatch.setattr(ops, "kernel_for", lambda spec, device: FakeKernel(spec, log))
    monkeypatch.setattr(ops, "scratch_buffer", lambda device, rows, head: torch.zeros(rows, head))
    monkeypatch.setattr(plugin, "_device_problem", lambda device: None)
    from compressc.runtime import c128a_split

    monkeypatch.setattr(c128a_split, "split_rows_limit", lambda: 0)  # C128A's pair (its host path)
    ops.set_debug_checks(None)
    case = host_path.make_case(op, 16, torch.device("cpu"))
    host_path.calls_for(case, "ops")()
    host_path.calls_for(case, "vllm")()  # vLLM's keywords: served, not refused
    kernels = 2 if op == "c128a" else 1
    # the same kernels on the same tensors (C128A's scratch here is a new stand-in buffer per call)
    seen = [(variant, rows, {k: v for k, v in values.items() if k != "compressed_kv"})
            for variant, rows, values in log]
    assert len(log) == 2 * kernels and seen[:kernels] == seen[kernels:]


def test_a_missing_kernel_is_reported(monkeypatch, capsys):
    from compressc.runtime.resolve import KernelNotFoundError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def run(args):
        raise KernelNotFoundError("no compressc kernel c4a_h512_q64_r64_bf16 for sm_90a.")

    monkeypatch.setattr(host_path, "run", run)
    assert host_path.main([]) == 2
    err = capsys.readouterr().err
    assert err == ("host_path.py: a kernel is missing:\n"
                   "no compressc kernel c4a_h512_q64_r64_bf16 for sm_90a.\n")


def test_the_cpu_host_path_benchmark_runs_every_op(tmp_path):
    """benchmarks/host_path_cpu.py end to end (it broke once when C128A's small-T path changed)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("gcc") is None:
        pytest.skip("the stub libcuda needs gcc")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "benchmarks/host_path_cpu.py", "--calls", "200", "--repeat", "1"],
                          cwd=root, env={"PYTHONPATH": f"{root}:{root / 'tests'}", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert rows == ["ops.c4a", "ops.c128a", "ops.indexer_fp8", "cuLaunchKernel", "cuLaunchKernelEx"]
