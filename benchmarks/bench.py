"""Side-by-side GPU benchmark of the compressor kernels (run on a GPU host; compiles nothing).

    PYTHONPATH=. python benchmarks/bench.py --kernels build/kernels \
        --derived build/kernels-derived --baseline build/kernels-baseline --out benchmarks/results

For each default kernel (C4A, C128A as the runtime runs it: one c128a_split launch at
T <= COMPRESSC_C128A_SPLIT_ROWS with impl "pair" (both kernels) beside it, both kernels with
the scratch buffer above; the fp8
and MXFP4 indexers, each in every cache format it ships: `c4a_full_bf16`, `c128a_full_fp8`,
`indexer_mxfp4_rot`, ...; bf16 RMSNorm weight), scenario (prefill: one sequence at positions 0..T-1;
decode: T requests, every row a boundary) and T, it times in one process and on the
same inputs: compressc's default schedule, the baseline schedule, and the torch
reference. Method: CUDA events around each call, calls queued behind torch.cuda._sleep
so host launch overhead stays out, medians (p10/p90) of many calls, and page tables
rotated over a state pool several times the L2 so no call finds its rows in cache.
Also the per-call time of the same calls captured in one CUDA graph, and (impl "copy")
torch's device-to-device copy moving the case's unique bytes (half read, half written),
timed the same way over rotated buffers: what a stock kernel moving that much data
costs, launch and ramp included, where the 2 GiB copy gives only the bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from compressc import reference
from compressc.runtime import c128a_split
from compressc.runtime.args import pack_args
from compressc.runtime.loader import load_kernel
from compressc.runtime.ops import _common_values, kernel_spec
from compressc.runtime.resolve import KernelImage, find_kernel
from compressc.runtime.validate import compressed_values
from compressc.scenarios import make_scenario
from compressc.specs.abi import abi
from compressc.specs.family import make_spec

T_LIST = (1, 32, 128, 512, 1024, 2048, 4096, 8192, 16384)
L2_FLUSH_BYTES = 256 << 20  # rotate over >= 5x the H100's 50 MB L2
SLEEP_CYCLES = 4_000_000  # ~2 ms at 1.98 GHz: longer than the host needs to queue a batch
BATCH = 16


# bench kernel -> (family kernel, cache format, rotate): every format the matrix ships
KERNELS = {
    "c4a": ("c4a", "fp8_ds_mla", False),
    "c4a_full_bf16": ("c4a", "full_bf16", False),
    "c4a_full_fp8": ("c4a", "full_fp8", False),
    "c128a": ("c128a", "fp8_ds_mla", False),
    "c128a_full_bf16": ("c128a", "full_bf16", False),
    "c128a_full_fp8": ("c128a", "full_fp8", False),
    "indexer_fp8": ("indexer_fp8", "indexer_fp8", False),
    "indexer_fp8_rot": ("indexer_fp8", "indexer_fp8", True),
    "indexer_mxfp4": ("indexer_mxfp4", "indexer_mxfp4", False),
    "indexer_mxfp4_rot": ("indexer_mxfp4", "indexer_mxfp4", True),
}
DEFAULT_KERNELS = ("c4a", "c128a", "indexer_fp8")
# the fused CSA launch against the two separate ones (benchmarks/bench_csa.py; not a default)
CSA_CHOICES = ("csa", "csa_full_bf16", "csa_full_fp8", "csa_mxfp4")


@dataclass
class Case:
    kernel: str  # a KERNELS name
    scenario: str  # "prefill" | "decode"
    T: int

    @property
    def family(self) -> str:
        return KERNELS[self.kernel][0]


def _pool_spec(kernel: str):
    family, fmt, rotate = KERNELS[kernel]
    if family == "c128a":
        return make_spec("c128a_compress", 512, 64, weight_dtype="f32")
    return make_spec(family, weight_dtype="bf16", cache_format=fmt, rotate=rotate)


def _store_spec(kernel: str):
    family, fmt, _ = KERNELS[kernel]
    return kernel_spec("c128a_store", 512, 64, "bf16", fmt) if family == "c128a" else _pool_spec(kernel)


def _out_cache(kernel: str, sc) -> torch.Tensor:
    """The poisoned k_cache of the kernel's format, as many pages as the scenario's."""
    from compressc.scenarios import SENTINEL, page_bytes

    spec, B = _store_spec(kernel), sc.kv_cache_block_size
    stride = page_bytes(spec, B)
    return torch.full((sc.k_cache.shape[0], B, stride // B), SENTINEL, dtype=torch.uint8, device="cuda")


def _unique_bytes(kernel: str, spec, sc, active: torch.Tensor) -> int:
    """State rows read once (per stream), cache bytes written, row metadata read."""
    idx = active.nonzero().flatten()
    pos = sc.positions[idx]
    req = sc.token_to_req_indices[idx].long()
    i = torch.arange(spec.window, device=pos.device)
    q = pos[:, None] - (spec.window - 1) + i[None, :]
    stream = (i // spec.ratio)[None, :].expand_as(q)
    ok = q >= 0
    page = sc.block_table[req[:, None].expand_as(q), (q.clamp_min(0) // sc.block_size)]
    row_id = (page.long() * sc.block_size + q.clamp_min(0) % sc.block_size) * 2 + stream
    rows = torch.unique(row_id[ok]).numel()
    state = rows * spec.head * 2 * 4
    store = _store_spec(kernel).store
    return state + int(idx.numel()) * (store.token_stride + store.scale_dim) + sc.T * 28


def _image_by_variant(root: Path, spec) -> KernelImage:
    for path in sorted(root.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("variant") == spec.variant:
            cubin = (path.parent / manifest["cubin"]).read_bytes()
            return KernelImage(manifest, cubin, f"before ({path.parent})")
    raise SystemExit(f"--before {root}: no kernel of {spec.variant}")
PIPELINES = {"compressc": "default", "derived": "derived", "baseline": "baseline"}  # impl -> `-p`
# impl "pair": C128A's two kernels from the --kernels dir where the runtime would take the one-launch
# c128a_split (T <= COMPRESSC_C128A_SPLIT_ROWS, docs/kernels.md §13), timed beside it


def takes_split(case: Case) -> bool:
    """Whether ops.compress_c128a runs this case as one c128a_split launch."""
    family, fmt, _ = KERNELS[case.kernel]
    return family == "c128a" and c128a_split.takes_split(case.T, fmt, None, False)


class Bench:
    def __init__(self, dirs: dict[str, Path], arch: str, reps: int) -> None:
        self.dirs = dirs
        self.arch, self.reps = arch, reps
        self.events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                       for _ in range(reps)]

    def kernel(self, impl: str, spec):
        impl = "compressc" if impl == "pair" else impl
        if impl == "before":  # an earlier build, found by variant: its keys are not today's
            return load_kernel(_image_by_variant(self.dirs[impl], spec), torch.cuda.current_device())
        # each dir holds one pipeline's builds; the runtime serves a build only by its pipeline
        image = find_kernel(spec, self.arch, pack_roots=[], cache_dir=self.dirs[impl], allow_jit=False,
                            pipeline=PIPELINES[impl])
        return load_kernel(image, torch.cuda.current_device())

    def time_calls(self, calls) -> list[float]:
        """Median/p10/p90 inputs: each call event-timed, queued behind a GPU sleep."""
        for start in range(0, self.reps, BATCH):
            torch.cuda._sleep(SLEEP_CYCLES)
            for k in range(start, min(start + BATCH, self.reps)):
                e0, e1 = self.events[k]
                e0.record()
                calls[k % len(calls)]()
                e1.record()
            torch.cuda.synchronize()  # each batch starts behind its own sleep
        return [e0.elapsed_time(e1) * 1e3 for e0, e1 in self.events[: self.reps]]

    def time_graph(self, calls, n: int = 32) -> float:
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for k in range(2):
                calls[k % len(calls)]()
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=stream):
                for k in range(n):
                    calls[k % len(calls)]()
        g.replay()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        e0.record()
        for _ in range(5):
            g.replay()
        e1.record()
        torch.cuda.synchronize()
        return e0.elapsed_time(e1) * 1e3 / (5 * n)


def rotated_tables(sc, state_bytes_per_call: int, max_pool_bytes: int) -> tuple[torch.Tensor, list]:
    """A state pool of random pages and page tables that walk through it."""
    page_bytes = sc.state_cache[0].numel() * 4
    used = sc.state_cache.shape[0]
    sets = max(2, min(4096, math.ceil(L2_FLUSH_BYTES / max(state_bytes_per_call, 1))))
    pool_pages = min(max(used * 2, L2_FLUSH_BYTES // page_bytes + used), max_pool_bytes // page_bytes)
    pool = torch.randn((pool_pages, *sc.state_cache.shape[1:]), device="cuda", dtype=torch.float32)
    span = max(1, pool_pages - used)
    tables = [(sc.block_table + (k * used) % span).contiguous() for k in range(sets)]
    return pool, tables


def make_calls(bench: Bench, impl: str, case: Case, sc, pool, tables, out, scratch):
    pool_spec, store_spec = _pool_spec(case.kernel), _store_spec(case.kernel)
    args = dict(state_cache=pool, token_to_req_indices=sc.token_to_req_indices, positions=sc.positions,
                slot_mapping=sc.slot_mapping, block_table=tables[0], block_size=sc.block_size,
                rms_norm_weight=sc.rms_norm_weight, rms_norm_eps=sc.rms_norm_eps,
                cos_sin_cache=sc.cos_sin_cache,
                k_cache=out, kv_slot_mapping=sc.kv_slot_mapping, kv_cache_block_size=sc.kv_cache_block_size)
    if store_spec.cache_format == "full_fp8":
        args["fp8_scale"] = torch.ones(1, device="cuda")
    if impl == "torch":
        return [_torch_call(case, pool_spec, args, t, scratch) for t in tables[:8]]
    values = _common_values(store_spec, args, pool_spec)
    if case.family == "c128a":
        values |= compressed_values(pool_spec, scratch, case.T)
    specs = [pool_spec, store_spec] if case.family == "c128a" else [pool_spec]
    if impl != "pair" and takes_split(case):  # as ops.compress_c128a: one launch at small T
        split_spec = kernel_spec("c128a_split", 512, 64, "bf16", store_spec.cache_format)
        device = torch.device("cuda", torch.cuda.current_device())
        workspace = c128a_split.split_workspace(device, case.T, 512)
        values = _common_values(split_spec, args, split_spec) | {"split_workspace": workspace.data_ptr()}
        specs = [split_spec]
    kernels = [(bench.kernel(impl, s), abi(s)) for s in specs]
    calls = []
    for t in tables:
        v = values | {"block_table": t.data_ptr()}
        packed = [(k, pack_args(p, {x.name: v[x.name] for x in p})) for k, p in kernels]
        # as ops.compress_c128a does: the store may start under its compress kernel's tail
        calls.append(lambda packed=packed: [k.launch_rows(case.T, pa[1], overlap_previous=i > 0)
                                            for i, (k, pa) in enumerate(packed)])
    return calls


def _torch_call(case: Case, pool_spec, args: dict, table, scratch):
    a = args | {"block_table": table}
    if case.family != "c128a":
        return lambda: reference.compress_fused(pool_spec, *a.values())
    store_spec = _store_spec(case.kernel)

    def run() -> None:
        reference.c128a_compress(pool_spec, a["state_cache"], a["token_to_req_indices"], a["positions"],
                                 a["slot_mapping"], a["block_table"], a["block_size"], scratch,
                                 a["kv_slot_mapping"])
        reference.c128a_store(store_spec, scratch, a["token_to_req_indices"], a["positions"],
                              a["slot_mapping"],
                              a["rms_norm_weight"], a["rms_norm_eps"], a["cos_sin_cache"], a["k_cache"],
                              a["kv_slot_mapping"], a["kv_cache_block_size"], fp8_scale=a.get("fp8_scale"))
    return run


def copy_gbps() -> float:
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        dst.copy_(src)
    e1.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 10 / (e0.elapsed_time(e1) * 1e-3) / 1e9


def empty_launch_us(bench: Bench) -> float:
    return statistics.median(bench.time_calls([lambda: torch.cuda._sleep(0)]))


def run_case(bench: Bench, case: Case, copy: float, impls: list[str], max_pool: int) -> list[dict]:
    spec = _pool_spec(case.kernel)
    sc = make_scenario(spec, case.scenario, case.T, device="cuda", seed=case.T, weight_dtype="bf16")
    active = sc.active()
    nbytes = _unique_bytes(case.kernel, spec, sc, active)
    if case.family == "c128a":
        nbytes += 2 * int(active.sum()) * spec.head * 4  # scratch rows written then read
    pool, tables = rotated_tables(sc, nbytes, max_pool)
    out = _out_cache(case.kernel, sc)
    scratch = torch.empty((case.T, 512), device="cuda", dtype=torch.float32)
    rows = []
    if "compressc" in impls and takes_split(case):
        impls = [*impls, "pair"]
    for impl in impls:
        calls = make_calls(bench, impl, case, sc, pool, tables, out, scratch)
        rows.append(timed_row(bench, case, impl, calls, nbytes, copy, graph=impl != "torch"))
    del pool, tables, out, scratch, sc
    torch.cuda.empty_cache()
    if "compressc" in impls:
        rows.append(same_size_copy(bench, case, nbytes, copy))
    return rows


def same_size_copy(bench: Bench, case: Case, nbytes: int, copy: float) -> dict:
    """A copy of nbytes / 2 bytes (nbytes of traffic) per call, cold in L2 like the kernels."""
    half = max(16, nbytes // 2 // 16 * 16)
    pairs = max(2, min(4096, math.ceil(L2_FLUSH_BYTES / half)))
    bufs = [tuple(torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(2))
            for _ in range(pairs)]
    calls = [lambda s=s, d=d: d.copy_(s) for s, d in bufs]
    row = timed_row(bench, case, "copy", calls, nbytes, copy, graph=False)
    del bufs, calls
    torch.cuda.empty_cache()
    return row


def timed_row(bench: Bench, case: Case, impl: str, calls, nbytes: int, copy: float, graph: bool) -> dict:
    """Two warm-up calls, the event-timed median (p10, p90) and, with `graph`, the per-call
    time inside one CUDA graph: one row of results.json."""
    for c in calls[:2]:
        c()
    times = bench.time_calls(calls)
    us = statistics.median(times)
    q = statistics.quantiles(times, n=10)
    graph_us = bench.time_graph(calls) if graph else float("nan")
    gbps = nbytes / (us * 1e-6) / 1e9
    return {"kernel": case.kernel, "scenario": case.scenario, "impl": impl, "T": case.T,
            "us": round(us, 2), "p10_us": round(q[0], 2), "p90_us": round(q[-1], 2),
            "graph_us": round(graph_us, 2), "bytes": nbytes, "gbps": round(gbps, 1),
            "pct_of_copy": round(100 * gbps / copy, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", type=Path, required=True,
                    help="kernel dir of the shipped schedule (-p default: tuned where tuned.json has it)")
    ap.add_argument("--derived", type=Path, default=None,
                    help="kernel dir built with -p derived (the un-tuned default), shown as impl 'derived'")
    ap.add_argument("--baseline", type=Path, default=None, help="kernel dir built with -p baseline")
    ap.add_argument("--before", type=Path, default=None,
                    help="kernel dir of an earlier build (impl 'before': the same kernels, side by side)")
    ap.add_argument("--before-first", action="store_true",
                    help="time 'before' ahead of compressc in each case (to see an order effect)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--kernel", action="append", choices=[*KERNELS, *CSA_CHOICES], default=None,
                    help=f"repeatable; default {', '.join(DEFAULT_KERNELS)}")
    ap.add_argument("--scenario", action="append", choices=["prefill", "decode"], default=None)
    ap.add_argument("--T", type=int, action="append", default=None)
    ap.add_argument("--reps", type=int, default=64)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    ap.add_argument("--max-pool-gib", type=float, default=12.0)
    args = ap.parse_args(argv)
    from benchmarks.report import print_table, write_results

    torch.cuda.init()
    dirs = {"compressc": args.kernels, "before": args.before, "derived": args.derived,
            "baseline": args.baseline}
    dirs = {impl: d for impl, d in dirs.items() if d is not None}
    bench, slow = Bench(dirs, "sm_90a", args.reps), Bench({"compressc": args.kernels}, "sm_90a", 8)
    copy = copy_gbps()
    empty = empty_launch_us(bench)
    print(f"{torch.cuda.get_device_name()}: copy {copy:.0f} GB/s, empty launch {empty:.2f} us", flush=True)
    impls = list(dirs)
    if args.before_first and "before" in impls:
        impls.remove("before")
        impls.insert(0, "before")
    rows = []
    started = time.perf_counter()
    for kernel in args.kernel or list(DEFAULT_KERNELS):
        for scenario in args.scenario or ["prefill", "decode"]:
            for T in args.T or T_LIST:
                case = Case(kernel, scenario, T)
                if kernel in CSA_CHOICES:  # impls fused, separate and c4a; no torch row
                    from benchmarks.bench_csa import run_csa_case

                    rows += run_csa_case(bench, case, copy, int(args.max_pool_gib * (1 << 30)))
                else:
                    rows += run_case(bench, case, copy, impls, int(args.max_pool_gib * (1 << 30)))
                if not args.no_torch and kernel not in CSA_CHOICES:
                    rows += run_case(slow, case, copy, ["torch"], int(args.max_pool_gib * (1 << 30)))
                print(f"  {kernel} {scenario} T={T}: " + ", ".join(
                    f"{r['impl']} {r['us']} us" for r in rows if r["T"] == T and r["kernel"] == kernel
                    and r["scenario"] == scenario), flush=True)
    print_table(rows)
    write_results(args.out, rows, copy, empty)
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
