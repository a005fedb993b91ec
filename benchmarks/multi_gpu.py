"""Several GPUs (issue 19): the ops on every device from one process, N ranks starting together.

    PYTHONPATH=. COMPRESSC_NO_JIT=1 COMPRESSC_CACHE_DIR=$PWD/build/kernels \\
        python benchmarks/multi_gpu.py --ranks 8 --out benchmarks/results/multi_gpu.json

1. **One process, every device.** For each visible GPU, alternating round the devices twice,
   each device on its own stream: a C4A and an fp8-indexer call on that device's tensors (the
   kernel table loads each module into that device's context), bytes checked against
   compressc.reference (compressc.acceptance). Then a CUDA graph captured on the last device,
   replayed on new state values in the same buffers, checked again.
2. **Tensor-parallel start.** N ranks (torch.multiprocessing, rank r on GPU r mod the device
   count) create their CUDA context, wait at one barrier, and only then `import compressc`:
   each times import -> its first completed C4A launch (cold start, the context excluded, as
   benchmarks/cold_start.py does) and counts its compiles (none with COMPRESSC_NO_JIT=1 or an
   installed pack; with JIT and an empty cache, exactly one rank compiles each kernel).
3. **The same bytes on every rank.** Every rank writes the same seeded inputs; the caches are
   all-gathered (NCCL where every rank has a GPU of its own, else gloo over host copies) and
   rank 0 checks each rank's bytes equal its own, which equal the reference.

Prints one line per check and writes the figures to --out (JSON). Exit status 1 when a check
fails. Ranks that share a GPU (more ranks than GPUs) test the start and the bytes, not NCCL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

SEED, T = 19, 64


def backend_for(ranks: int, devices: int) -> str:
    """NCCL needs a GPU per rank; ranks sharing a GPU gather over gloo (host copies)."""
    return "nccl" if 0 < ranks <= devices else "gloo"


def device_of(rank: int, devices: int) -> int:
    return rank % devices


def _case(kernel: str, device: torch.device, seed: int):
    from compressc.scenarios import make_scenario
    from compressc.specs import make_spec

    spec = make_spec(kernel)
    return spec, make_scenario(spec, "mixed", T, device=device, seed=seed)


def _run(spec, sc, cache: torch.Tensor) -> None:
    from compressc.runtime import ops

    getattr(ops, f"compress_{spec.kernel}")(*sc.args(sc.typed(cache)), **sc.op_kwargs())


def _problem(spec, sc, got: torch.Tensor) -> str | None:
    """None when `got` holds the reference's bytes (acceptance rules), else the report."""
    from compressc.acceptance import allowed_steps, compare_cache_bytes

    torch.cuda.synchronize(got.device)
    n = min(sc.T, sc.kv_slot_mapping.numel())
    slots = sc.kv_slot_mapping[:n][sc.active()[:n]]
    want = sc.run_reference()
    report = compare_cache_bytes(spec, got, want, slots, kv_cache_block_size=sc.kv_cache_block_size)
    ok = report.ok and report.code_steps <= allowed_steps(spec, report)
    return None if ok else str(report)


def one_process(devices: list[int]) -> dict:
    """Part 1: alternate the devices (own streams), then a graph on the last one."""
    from compressc.runtime import ops

    problems, calls = [], 0
    streams = {d: torch.cuda.Stream(device=d) for d in devices}
    cases = {
        (d, k): _case(k, torch.device("cuda", d), SEED + 10 * d + i)
        for d in devices
        for i, k in enumerate(("c4a", "indexer_fp8"))
    }
    for _ in range(2):
        for d in devices:
            with torch.cuda.device(d), torch.cuda.stream(streams[d]):
                for k in ("c4a", "indexer_fp8"):
                    spec, sc = cases[d, k]
                    cache = sc.poisoned_cache()
                    _run(spec, sc, cache)
                    calls += 1
                    problem = _problem(spec, sc, cache)
                    if problem:
                        problems.append(f"cuda:{d} {spec.variant}: {problem}")
    loaded = sorted({index for index, _ in ops._KERNELS})
    problems += _graph_on(devices[-1])
    return {"devices": devices, "calls": calls, "modules_on_devices": loaded, "problems": problems}


def _graph_on(d: int) -> list[str]:
    spec, sc = _case("c4a", torch.device("cuda", d), SEED + 99)
    cache = sc.poisoned_cache()
    stream = torch.cuda.Stream(device=d)
    with torch.cuda.device(d), torch.cuda.stream(stream):
        _run(spec, sc, cache)  # resolve, load and check outside the capture
        torch.cuda.synchronize(d)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            _run(spec, sc, cache)
    problems = []
    for step in range(2):
        from compressc.scenarios import SENTINEL

        cache.fill_(SENTINEL)
        sc.state_cache.copy_(torch.randn_like(sc.state_cache) * (1 + step))
        graph.replay()
        problem = _problem(spec, sc, cache)
        if problem:
            problems.append(f"graph on cuda:{d}, replay {step}: {problem}")
    return problems


def _rank(rank: int, ranks: int, devices: int, init: str, barrier, results) -> None:
    """Part 2 and 3 in one rank (spawned: nothing of compressc is imported before the clock)."""
    import torch.distributed as dist

    index = device_of(rank, devices)
    torch.cuda.set_device(index)
    device = torch.device("cuda", index)
    torch.empty(1, device=device)  # the context exists before the clock starts
    torch.cuda.synchronize()
    backend = backend_for(ranks, devices)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=ranks)
    # with the JIT on, count this rank's compiles (the compiler imported before the clock: the
    # figure is then not a cold start); with COMPRESSC_NO_JIT=1 nothing can compile
    compiles = [] if os.environ.get("COMPRESSC_NO_JIT") == "1" else _count_compiles()
    barrier.wait()
    t0 = time.perf_counter()
    import compressc  # noqa: F401
    from compressc.runtime import ops

    t_import = time.perf_counter() - t0
    spec, sc = _case("c4a", device, SEED)  # the same inputs on every rank (not timed)
    cache = sc.poisoned_cache()
    args = sc.args(sc.typed(cache))
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    ops.compress_c4a(*args, **sc.op_kwargs())
    torch.cuda.synchronize()
    t_launch = time.perf_counter() - t1
    cold_ms = (t_import + t_launch) * 1e3
    problem = _problem(spec, sc, cache)
    gathered = _gather(cache, ranks, backend)
    same = None if gathered is None else [bool(torch.equal(g, gathered[0])) for g in gathered]
    results.put({"rank": rank, "device": index, "cold_ms": round(cold_ms, 2),
                 "import_ms": round(t_import * 1e3, 2), "first_launch_ms": round(t_launch * 1e3, 2),
                 "compiles": len(compiles),
                 "problem": problem, "same_as_rank0": same})
    dist.destroy_process_group()


def _count_compiles() -> list:
    """A list that grows by one per compile in this process (the build extra's compile_source)."""
    calls: list = []
    try:
        from compressc.driver import compile as compile_module
    except ImportError:  # no nvidia-cutlass-dsl: this rank cannot compile at all
        return calls
    real = compile_module.compile_source

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    compile_module.compile_source = counted
    return calls


def _gather(cache: torch.Tensor, ranks: int, backend: str) -> list[torch.Tensor] | None:
    """Every rank's cache bytes on rank 0 (all-gather; None on the other ranks)."""
    import torch.distributed as dist

    flat = cache.view(torch.uint8).reshape(-1) if cache.dtype != torch.uint8 else cache.reshape(-1)
    local = flat if backend == "nccl" else flat.cpu()
    out = [torch.empty_like(local) for _ in range(ranks)]
    dist.all_gather(out, local)
    return out if dist.get_rank() == 0 else None


def tp_start(ranks: int, devices: int) -> dict:
    """Part 2 and 3: N ranks released together; cold start, compiles and bytes per rank."""
    import tempfile

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(ranks), ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{tmp}/rendezvous"
        procs = [ctx.Process(target=_rank, args=(r, ranks, devices, init, barrier, results))
                 for r in range(ranks)]
        for p in procs:
            p.start()
        got = sorted((results.get(timeout=300) for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join(timeout=60)
    problems = [f"rank {r['rank']}: {r['problem']}" for r in got if r["problem"]]
    problems += [f"rank {p.pid} exited {p.exitcode}" for p in procs if p.exitcode != 0]
    same = got[0]["same_as_rank0"] or []
    problems += [f"rank {i}'s cache differs from rank 0's" for i, ok in enumerate(same) if not ok]
    cold = [r["cold_ms"] for r in got]
    return {"ranks": ranks, "backend": backend_for(ranks, devices), "per_rank": got,
            "cold_ms_median": statistics.median(cold), "cold_ms_max": max(cold),
            "compiles": sum(r["compiles"] for r in got), "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=0, help="ranks to start together (default: one per GPU)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("multi_gpu.py: needs CUDA GPUs (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    devices = torch.cuda.device_count()
    ranks = args.ranks or devices
    if ranks < 1:
        ap.error(f"--ranks {args.ranks}: must be at least 1")
    one = one_process(list(range(devices)))
    print(f"one process, {devices} device(s): {one['calls']} calls, modules on {one['modules_on_devices']}, "
          f"{len(one['problems'])} problems")
    tp = tp_start(ranks, devices)
    print(f"{ranks} ranks on {devices} GPU(s) ({tp['backend']}): cold start median "
          f"{tp['cold_ms_median']:.1f} ms, max {tp['cold_ms_max']:.1f} ms, {tp['compiles']} compiles, "
          f"{len(tp['problems'])} problems")
    for line in one["problems"] + tp["problems"]:
        print("  " + line)
    result = {"gpu": torch.cuda.get_device_name(), "devices": devices, "date": time.strftime("%Y-%m-%d"),
              "no_jit": os.environ.get("COMPRESSC_NO_JIT", ""), "one_process": one, "tp_start": tp}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if one["problems"] or tp["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
