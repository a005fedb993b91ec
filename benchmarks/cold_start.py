"""Cold start: `import compressc` to the first completed C4A launch, each run a fresh process.

On the GPU host, with a kernel pack installed (kernels come from the pack; the JIT is off
so that a missing pack fails instead of compiling):

    python -m compileall -q compressc DIR   # as pip does at install: else every module compiles
    PYTHONPATH=. COMPRESSC_NO_JIT=1 python benchmarks/cold_start.py [--runs 5] [--breakdown] [--pack-site DIR]

On a machine without a GPU (`--cpu`): CPU tensors, torch's CUDA queries answered by
constants (capability 9.0, 132 SMs) and libcuda replaced by benchmarks/stub_cuda.py's
stand-in (every driver call returns at once), so what is timed is everything but the
driver's own work (cuModuleLoadData, the launch): the figure to watch without a GPU.

    PYTHONPATH=. COMPRESSC_NO_JIT=1 python benchmarks/cold_start.py --cpu --runs 9 --breakdown --pack-site DIR

--pack-site: a directory holding an installed pack (`pip install --no-deps --target DIR
compressc_kernels_sm90-*.whl`), put first on the children's PYTHONPATH.
--breakdown: the first call split into its steps (pack discovery, served fingerprint, the
rest of the lookup with the manifest/cubin checks, load) before the first launch, which then
only checks, prepares and launches (the ops reuse the resolved and loaded kernel).
--profile FILE: one more fresh process, its breakdown steps under cProfile and left out of the
table; FILE gets the 40 costliest functions by cumulative time (pstats text), to see where a
step's milliseconds go.

Each run is a fresh Python process (the parent spawns them): torch is imported and, on the
GPU, the CUDA context created before the clock starts (excluded); the inputs are made by the
parent and read with torch.load before the clock, so no compressc module is imported before
`import compressc`. Whether the children run from bytecode (what a pip-installed compressc
does) or compile every module from source (PYTHONDONTWRITEBYTECODE and no __pycache__) is
in the output: it changes the import figure by ~3x. Prints a table of the best and the
median over the runs, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("import_ms", "discover_ms", "fingerprint_ms", "lookup_ms", "load_ms", "first_launch_ms",
         "cold_start_ms", "second_launch_ms")


class Clock:
    """Wall and thread-CPU milliseconds of consecutive steps (CPU time: a shared machine's
    descheduled time is not counted; the GPU host's figure is the wall time)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def lap(self, step: str) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        self.wall[step] = round((wall - self._wall) * 1e3, 3)
        self.cpu[step] = round((cpu - self._cpu) * 1e3, 3)
        self._wall, self._cpu = wall, cpu


def child(inputs: Path, cpu: bool, breakdown: bool, profile: Path | None = None) -> dict:
    """One cold start in this (fresh) process."""
    import torch

    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    if cpu:
        _answer_cuda_queries(torch)
    else:
        torch.cuda.init()
        torch.empty(1, device=device)  # the context exists before the clock starts
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in torch.load(inputs))
    sync = (lambda: None) if cpu else torch.cuda.synchronize
    sync()
    clock = Clock()
    import compressc  # noqa: F401
    from compressc.runtime import ops

    clock.lap("import_ms")
    if cpu:
        ops.check_device = lambda tensors: torch.device("cuda", 0)  # CPU tensors stand for cuda:0
    spec = ops.kernel_spec("c4a", 512, 64, "bf16", "fp8_ds_mla")
    if breakdown:
        _profiled(lambda: _steps(ops, spec, clock), profile)
    clock.start()
    ops.compress_c4a(*args, head_size=512, quant_block=64)
    sync()
    clock.lap("first_launch_ms")
    for times in (clock.wall, clock.cpu):
        times["cold_start_ms"] = round(sum(times.values()), 3)
    clock.start()
    ops.compress_c4a(*args, head_size=512, quant_block=64)
    sync()
    clock.lap("second_launch_ms")
    return {**clock.wall, "cpu": clock.cpu, **_facts(ops, spec)}


def _steps(ops, spec, clock: Clock) -> None:
    """The first call's resolve and load, each step timed (all cached: the op reuses them)."""
    import torch

    from compressc.packs.wanted import served_fingerprint
    from compressc.runtime.resolve import installed_pack_roots

    clock.start()
    installed_pack_roots()
    clock.lap("discover_ms")
    served_fingerprint()
    clock.lap("fingerprint_ms")
    ops.kernel_image(spec, 0)
    clock.lap("lookup_ms")
    ops.kernel_for(spec, torch.device("cuda", 0))
    clock.lap("load_ms")


def _profiled(steps, profile: Path | None) -> None:
    if profile is None:
        return steps()
    import cProfile
    import io
    import pstats

    with cProfile.Profile() as prof:
        steps()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(40)
    profile.write_text(text.getvalue())


def _facts(ops, spec) -> dict:
    from compressc.runtime.resolve import find_kernel

    origin = find_kernel(spec, "sm_90a").origin
    # the pack's wanted.json spares the lookup the compiler's import (compressc.packs.wanted)
    compiler = sorted(m for m in ("compressc.passes", "compressc.ir", "compressc.kernels")
                      if m in sys.modules)
    import importlib.util

    import compressc

    pyc = importlib.util.cache_from_source(compressc.__file__)
    return {"origin": origin, "compiler_imported": compiler, "bytecode": os.path.exists(pyc),
            "compressc": compressc.__file__}


def _answer_cuda_queries(torch) -> None:
    """What the ops still ask torch about cuda:0, answered as on a GPU (CPU mode); the loader
    asks the driver, which is benchmarks/stub_cuda.py's stand-in here (an H200: sm_90, 132 SMs)."""
    torch.cuda.is_current_stream_capturing = lambda: False
    torch.cuda.current_device = lambda: 0


# -- the parent: inputs, fresh processes, the table ----------------------------------------------
def make_inputs(path: Path) -> None:
    import torch

    from compressc.scenarios import make_scenario
    from compressc.specs import make_spec

    scenario = make_scenario(make_spec("c4a", 512, 64), "prefill", 64, device="cpu", seed=0)
    torch.save(scenario.args(scenario.poisoned_cache()), path)


def run_children(args: argparse.Namespace, tmp: Path) -> list[dict]:
    inputs = tmp / "inputs.pt"
    make_inputs(inputs)
    env = dict(os.environ)
    if args.pack_site is not None:
        site = str(args.pack_site.resolve())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
    if args.cpu:
        sys.path.insert(0, str(Path(__file__).parent))
        from stub_cuda import build

        lib_dir = build(tmp / "stub").parent
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib_dir), env.get("LD_LIBRARY_PATH")]))
    command = [sys.executable, __file__, "--child", str(inputs)] + ["--cpu"] * args.cpu
    command += ["--breakdown"] * args.breakdown
    runs = []
    # the profiled run is one more fresh process, left out of the table (cProfile slows every step)
    profile = [["--profile", str(args.profile)]] if args.profile is not None else []
    for extra in profile + [[]] * args.runs:
        done = subprocess.run(command + extra, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"cold_start.py: a run failed:\n{done.stderr[-3000:]}")
        if not extra:
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def summary(runs: list[dict]) -> dict:
    steps = [s for s in STEPS if s in runs[0]]

    def row(values: list[float]) -> dict:
        return {"best": min(values), "median": round(statistics.median(values), 3)}

    table = {s: row([r[s] for r in runs]) for s in steps}
    cpu = {s: row([r["cpu"][s] for r in runs]) for s in steps}
    facts = {k: v for k, v in runs[0].items() if k not in STEPS and k != "cpu"}
    return {"runs": len(runs), "steps": table, "thread_cpu": cpu, **facts}


def print_table(result: dict) -> None:
    print(f"{'step':18s} {'wall best':>10s} {'median':>8s} {'cpu best':>10s} {'median':>8s}   ms, "
          f"{result['runs']} fresh processes")
    for step, row in result["steps"].items():
        cpu = result["thread_cpu"][step]
        print(f"{step:18s} {row['best']:10.2f} {row['median']:8.2f} {cpu['best']:10.2f} {cpu['median']:8.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="CPU tensors and a stub libcuda (no GPU needed)")
    ap.add_argument("--breakdown", action="store_true", help="time the resolve and load steps apart")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes (best and median reported)")
    ap.add_argument("--pack-site", type=Path, default=None, help="directory with an installed kernel pack")
    ap.add_argument("--profile", type=Path, default=None,
                    help="cProfile one more run (not in the table) into this file (pstats text)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.breakdown |= args.profile is not None
    if args.child is not None:
        print(json.dumps(child(args.child, args.cpu, args.breakdown, args.profile)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        result = summary(run_children(args, Path(tmp)))
    result |= {"cpu": args.cpu, "no_jit": os.environ.get("COMPRESSC_NO_JIT"),
               "python": sys.version.split()[0]}
    print_table(result)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
