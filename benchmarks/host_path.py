"""Host time of one eager call of each op, next to its GPU time (run on a GPU host).

    PYTHONPATH=. python benchmarks/host_path.py --kernels build/kernels --out benchmarks/results/results.json

For each op (C4A, C128A as both kernels, the fp8 indexer; bf16 RMSNorm weight) and T it
measures, on decode inputs (every row a boundary):

- host_us: wall time of N back-to-back calls / N, with the GPU kept busy by a queued
  torch.cuda._sleep so no call waits for the device (what the caller's thread spends);
- gpu_us: CUDA events around the same N calls queued behind a sleep, / N (the kernels'
  back-to-back time, launch gaps excluded).

Paths ("impl"): `ops` (compressc.runtime.ops, the signature cache), `ops_checked`
(COMPRESSC_DEBUG_CHECKS: every check, cuda-bindings launch), `vllm` (the plugin's dispatcher
called with vLLM's keywords), `torch_op` (torch.ops.compressc.*), and the bare launch of a
prepacked argument buffer through cuda-bindings (`launch_bindings`), through ctypes on
libcuda's 11-argument cuLaunchKernel (`launch_ctypes`) and on cuLaunchKernelEx with a prebuilt
configuration (`launch_ctypes_ex`: what the `ops` path calls). `ops` minus `launch_ctypes_ex`
is the Python cost of the signature check and packing.
Rows go into --out with "kernel": "host_enqueue"; other rows
of an existing file are kept, earlier host_enqueue rows replaced.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

OPS = ("c4a", "c128a", "indexer_fp8")
IMPLS = ("ops", "ops_checked", "vllm", "torch_op", "launch_bindings", "launch_ctypes", "launch_ctypes_ex")
T_LIST = (1, 128, 4096)
SLEEP_CYCLES = 20_000_000  # ~10 ms at 2 GHz: longer than the host needs to queue a batch
ROW_KIND = "host_enqueue"


class BenchError(RuntimeError):
    """Why the benchmark cannot run here; main() prints it and exits 2."""


class NotMeasured(RuntimeError):
    """A bare launch that this kernel cannot take (the row is skipped with the reason)."""


def host_us(call: Callable[[], None], calls: int, repeat: int,
            busy: Callable[[], None] | None = None) -> float:
    """Median over `repeat` batches of the host time of one call (µs); `busy` runs before each
    batch (a device sleep, so the batch never waits for the GPU), a device sync after it."""
    times = []
    for _ in range(repeat):
        if busy is not None:
            busy()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        times.append((time.perf_counter() - start) / calls * 1e6)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return statistics.median(times)


def gpu_us(call: Callable[[], None], calls: int, repeat: int) -> float:
    """Median over `repeat` batches of event-timed device time per call (µs), queued behind a sleep."""
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def merge_rows(path: Path, rows: list[dict], meta: dict) -> dict:
    """The results JSON at `path` with its host_enqueue rows replaced by `rows` (written back)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not a results JSON object (found {type(data).__name__})")
    kept = [r for r in data.get("rows", []) if r.get("kernel") != ROW_KIND]
    data.setdefault("host_path", {}).update(meta)
    data["rows"] = kept + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def row(op: str, impl: str, T: int, host: float, gpu: float, calls: int) -> dict:
    return {"kernel": ROW_KIND, "op": op, "impl": impl, "T": T, "host_us": round(host, 2),
            "gpu_us": round(gpu, 2), "calls": calls}


# -- the calls measured ---------------------------------------------------------------------------
def make_case(op: str, T: int, device: torch.device) -> SimpleNamespace:
    """Decode inputs of `op` with T rows: the op's positional arguments and vLLM's keywords."""
    from compressc.scenarios import make_scenario
    from compressc.specs import make_spec

    kernel = "c128a_store" if op == "c128a" else op
    sc = make_scenario(make_spec(kernel), "decode", T, device=device, seed=T)
    state = sc.state_cache
    if op == "c128a":
        pool = make_spec("c128a_compress", weight_dtype="f32")
        state = make_scenario(pool, "decode", T, device=device, seed=T).state_cache
    args = (state, sc.token_to_req_indices, sc.positions, sc.slot_mapping, sc.block_table, sc.block_size,
            sc.rms_norm_weight, sc.rms_norm_eps, sc.cos_sin_cache, sc.k_cache, sc.kv_slot_mapping,
            sc.kv_cache_block_size)
    return SimpleNamespace(op=op, T=T, args=args, vllm=vllm_keywords(op, sc, state))


def vllm_keywords(op: str, sc, state: torch.Tensor) -> dict:
    """What vLLM 0.34's DeepseekCompressor passes its dispatcher for these inputs."""
    head = sc.spec.head
    layout = {"indexer_fp8": (128, 128, 4)}.get(op, (64, 576, 8))
    return dict(state_cache=state, num_actual=sc.T, token_to_req_indices=sc.token_to_req_indices,
                positions=sc.positions, slot_mapping=sc.slot_mapping, block_table=sc.block_table,
                block_size=sc.block_size, state_width=state.shape[-1] // 2, cos_sin_cache=sc.cos_sin_cache,
                kv_cache=sc.k_cache, k_cache_metadata=SimpleNamespace(slot_mapping=sc.kv_slot_mapping),
                pdl_kwargs={"launch_pdl": False}, head_dim=head, rope_head_dim=sc.spec.rope,
                compress_ratio=sc.spec.ratio, overlap=sc.spec.ratio == 4, use_fp4_cache=False,
                rms_norm_weight=sc.rms_norm_weight, rms_norm_eps=sc.rms_norm_eps, quant_block=layout[0],
                token_stride=layout[1], scale_dim=layout[2])


def calls_for(case: SimpleNamespace, impl: str) -> Callable[[], None]:
    """One eager call of `case` through `impl` (see the module docstring)."""
    from compressc.integrations import vllm as plugin
    from compressc.runtime import ops, torch_ops

    name = f"compress_{case.op}"
    if impl in ("ops", "ops_checked"):
        fn = getattr(ops, name)
        return lambda: fn(*case.args)
    if impl == "torch_op":
        torch_ops.register()
        fn = getattr(torch.ops.compressc, name)
        return lambda: fn(*case.args)
    if impl == "vllm":
        dispatcher = (plugin.TritonDispatcher if case.op == "indexer_fp8" else plugin.CuteDispatcher)(
            _refuse, name)
        return lambda: dispatcher(**case.vllm)
    return bare_launch(case, impl)


def _refuse(**kwargs) -> None:
    raise BenchError("the plugin sent this call to vLLM's own kernel: the case is not one compressc serves")


def bare_launch(case: SimpleNamespace, impl: str) -> Callable[[], None]:
    """The launch alone of the op's first kernel, its argument buffer prepared by one ops call."""
    from compressc.runtime import ops
    from compressc.runtime.cudalaunch import FastKernel, driver_library

    ops.set_debug_checks(False)
    getattr(ops, f"compress_{case.op}")(*case.args)  # prepares (and caches) the launch
    prepared = next(iter(ops._SIGNATURES[case.op].entries.values()))
    launch = prepared.launches[0]
    kernel, array = launch.kernel, launch.array
    if impl == "launch_bindings":
        return lambda: kernel.launch_rows(case.T, array)
    lib = driver_library()
    if lib is None:
        raise BenchError("libcuda cannot be opened through ctypes on this host")
    stream = torch.cuda.current_stream().cuda_stream
    params = ctypes.c_void_p(ctypes.addressof(array))
    if impl == "launch_ctypes_ex":
        launch = FastKernel(kernel, lib).launcher(params)
        return lambda: launch(case.T, stream)
    if kernel.cluster > 1:
        raise NotMeasured("a cluster launch needs cuLaunchKernelEx")
    grid, (bx, by, bz), V = FastKernel(kernel, lib).grid(case.T), kernel.block, ctypes.c_void_p
    function, smem, plain = V(int(kernel.function)), kernel.smem_dynamic, lib.cuLaunchKernel
    return lambda: plain(function, grid, 1, 1, bx, by, bz, smem, V(stream), params, None)


def measure(case: SimpleNamespace, impl: str, calls: int, repeat: int) -> dict:
    """One row: host and GPU time per call of `case` through `impl`."""
    from compressc.runtime import ops

    ops.set_debug_checks(impl == "ops_checked")
    try:
        call = calls_for(case, impl)
        call()  # resolve, load and prepare outside the timing
        torch.cuda.synchronize()
        n = max(1, calls // 4) if impl == "ops_checked" else calls
        host = host_us(call, n, repeat, busy=lambda: torch.cuda._sleep(SLEEP_CYCLES))
        gpu = gpu_us(call, n, repeat)
    finally:
        ops.set_debug_checks(None)
    return row(case.op, impl, case.T, host, gpu, n)


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", type=Path, default=None,
                    help="kernel directory to load from (sets COMPRESSC_CACHE_DIR); default: packs and cache")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/host_path.json"),
                    help="results JSON to write host_enqueue rows into (other rows are kept)")
    ap.add_argument("--op", action="append", choices=OPS, default=None)
    ap.add_argument("--impl", action="append", choices=IMPLS, default=None)
    ap.add_argument("--T", type=int, action="append", default=None)
    ap.add_argument("--calls", type=int, default=500,
                    help="calls per timed batch (<= 1000: the driver's launch queue)")
    ap.add_argument("--repeat", type=int, default=7, help="timed batches; the median is reported")
    args = ap.parse_args(argv)
    if not 1 <= args.calls <= 1000:
        ap.error(f"--calls {args.calls}: use 1..1000 (more would fill the driver's launch queue)")
    return args


def check_environment(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise BenchError("needs a CUDA GPU: torch.cuda.is_available() is False")
    if args.kernels is not None:
        if not args.kernels.is_dir():
            raise BenchError(f"--kernels {args.kernels}: no such directory")
        os.environ["COMPRESSC_CACHE_DIR"] = str(args.kernels.resolve())


def main(argv: list[str] | None = None) -> int:
    from compressc.runtime.resolve import KernelNotFoundError

    args = parse_args(argv)
    try:
        check_environment(args)
        rows = run(args)
    except BenchError as exc:
        print(f"host_path.py: {exc}", file=sys.stderr)
        return 2
    except KernelNotFoundError as exc:  # its message says what to build or install (not any LookupError:
        # an IndexError inside a call is a bug to see with its traceback)
        print(f"host_path.py: a kernel is missing:\n{exc}", file=sys.stderr)
        return 2
    meta = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__}
    merge_rows(args.out, rows, meta)
    print(f"wrote {len(rows)} host_enqueue rows to {args.out}")
    return 0


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    print(f"{'op':12s} {'impl':16s} {'T':>6s} {'host us':>9s} {'gpu us':>9s}")
    for op in args.op or OPS:
        for T in args.T or T_LIST:
            case = make_case(op, T, device)
            for impl in args.impl or IMPLS:
                try:
                    r = measure(case, impl, args.calls, args.repeat)
                # a bare launch it cannot isolate
                except (IndexError, StopIteration, AttributeError, NotMeasured) as exc:
                    if not impl.startswith("launch_"):
                        raise
                    print(f"{op:12s} {impl:16s} {T:6d}   not measured: {type(exc).__name__}: {exc}",
                          flush=True)
                    continue
                rows.append(r)
                print(f"{op:12s} {impl:16s} {T:6d} {r['host_us']:9.2f} {r['gpu_us']:9.2f}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
