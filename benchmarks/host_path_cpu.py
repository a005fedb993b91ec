"""The Python side of one cached eager call, on a CPU host: everything but the driver's own work.

    PYTHONPATH=.:tests python benchmarks/host_path_cpu.py [--calls 20000] [--repeat 9] [--profile]

The ops run on CPU tensors with the device check and the kernel lookup replaced (as the CPU
tests do) and `libcuda` replaced by a stub library compiled here with gcc whose
`cuLaunchKernel` / `cuLaunchKernelEx` return 0 at once: a real ctypes foreign call with the
real arguments, so what is timed is the signature check, the argument packing and the
ctypes call, i.e. the host time of an eager call on a GPU host minus the driver's launch
work (benchmarks/host_path.py measures that there: `launch_ctypes` and `launch_ctypes_ex`).
Prints one line per path: the best and the median of --repeat batches, in µs per call of
this thread's CPU time (`time.thread_time`: on a shared build machine, time spent descheduled
is not counted; wall time is what the GPU host's benchmark reports).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

STUB = "int cuLaunchKernel(void) { return 0; }\nint cuLaunchKernelEx(void) { return 0; }\n"


def stub_driver(directory: Path) -> ctypes.CDLL:
    """A libcuda stand-in whose launch entry points return CUDA_SUCCESS and do nothing."""
    source, lib = directory / "stub.c", directory / "libcudastub.so"
    source.write_text(STUB)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    from compressc.runtime.cudalaunch import _typed

    return _typed(ctypes.CDLL(str(lib)))


def stand_in_kernel(spec, device) -> SimpleNamespace:
    """What loader.LoadedKernel offers the fast path (a plain launch: no cluster, not programmatic)."""
    from compressc.specs.launch import GridRule

    return SimpleNamespace(function=0x1000, block=(128, 1, 1), smem_dynamic=0, grid=GridRule("rows"),
                           sm_count=132, resident=0, max_clusters=0, cluster=1, programmatic=False,
                           device_index=0, entry=spec.variant)


def install(lib: ctypes.CDLL) -> None:
    """Route the ops to the stub: no device check, stand-in kernels, the stub driver."""
    from compressc.runtime import c128a_split, fastpath, ops
    from compressc.specs.abi import split_workspace_row

    fastpath.driver_library = lambda: lib
    fastpath._raw_stream = lambda index: 0
    ops.kernel_for = stand_in_kernel
    ops.check_device = lambda tensors: torch.device("cuda", 0)
    ops._SCRATCH[torch.device("cuda", 0)] = [torch.zeros(64 * 512)]
    ops.set_debug_checks(False)
    # C128A at T <= 32 takes c128a_split: its workspace, as the pair's scratch, in host memory
    rows = max(64, c128a_split.split_rows_limit())
    c128a_split._WORKSPACE[torch.device("cuda", 0)] = [torch.zeros(rows * split_workspace_row(512))]


def per_call(call: Callable[[], None], calls: int, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(calls):
            call()
        times.append((time.thread_time() - start) / calls * 1e6)
    return min(times), statistics.median(times)


def paths(lib: ctypes.CDLL) -> dict[str, Callable[[], None]]:
    """name -> one call: each op's cached call, its prepared launch alone, and the bare driver calls."""
    from test_runtime_ops import make_args

    from compressc.runtime import ops
    from compressc.runtime.cudalaunch import launch_config

    out = {}
    for op in ("c4a", "c128a", "indexer_fp8"):
        values = list(make_args(op).values())
        fn = getattr(ops, f"compress_{op}")
        fn(*values)  # checks, prepares and caches the signature
        out[f"ops.{op}"] = lambda fn=fn, values=values: fn(*values)
    V = ctypes.c_void_p
    function, params, config = V(0x1000), V(0x2000), launch_config(1, (128, 1, 1), 0, False)
    ref = ctypes.byref(config)
    plain = lib.cuLaunchKernel
    out["cuLaunchKernel (11 args)"] = lambda: plain(function, 5, 1, 1, 128, 1, 1, 0, V(0), params, None)
    out["cuLaunchKernelEx (4 args)"] = lambda: lib.cuLaunchKernelEx(ref, function, params, None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--profile", action="store_true", help="cProfile of the cached C4A call")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        lib = stub_driver(Path(tmp))
        install(lib)
        calls = paths(lib)
        for call in calls.values():
            per_call(call, 1000, 1)  # warm up
        print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
        for name, call in calls.items():
            best, median = per_call(call, args.calls, args.repeat)
            print(f"{name:28s} best {best:6.2f} us   median {median:6.2f} us")
        if args.profile:
            import cProfile
            import pstats

            profile = cProfile.Profile()
            c4a = calls["ops.c4a"]
            profile.runcall(lambda: [c4a() for _ in range(args.calls)])
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
