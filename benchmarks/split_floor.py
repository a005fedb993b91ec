"""A latency floor for c128a_split's chain at decode T = 1, piece by piece (docs/kernels.md §13).

The shipped kernel takes 7.30 us on an H200 (7.94 on an H100) at decode T = 1 against issue 16's
7.1 target, and its cluster merge took 12.4 us there. These probe kernels rebuild its chain one
step at a time, with its ABI, block (256 threads), 2-CTA occupancy hint and launch rule, so the
differences between rows price each step:

- `empty`: every CTA exits at once: the launch of this grid;
- `meta`: one warp's dependent metadata chain: positions / token_to_req_indices[row] ->
  block_table[req, page] -> one load from the state page;
- `window`: the chain, then each of the row group's 8 CTAs reads its 16 window rows x 1024 fp32
  (kv 512 + score 512: 64 KiB, 16 x 128-bit loads a lane, all issued before any use), sums them
  into a (max, sum, sum) partial and merges its two split groups through smem;
- `window+global`: + the global merge: 6 KiB partial stored, fence.acq_rel.gpu, CTA barrier,
  atom.inc (wrapping), the last arrival's 24 ld.global.cg a thread and the rank-order fold;
- `window+global+store`: + the last CTA stores a 656-byte cache row;
- `window+softmax+global+store`: the same with the real partial (9 ex2 a channel, as the kernel's
  one rescale a batch): the shipped kernel minus its epilogue's norm, rope and quantisation;
- `window+cluster`: the window in one cluster of 8, ranks 1..7 storing their partial into rank
  0's smem (st.shared::cluster) between two cluster barriers, rank 0 folding;
- `empty+cluster`: the empty kernel launched in clusters of 8.

The build also compiles the two real kernels (the shipped global split8 and the cluster8 occ2
candidate) into the same directory, so one run times everything on one GPU, interleaved. At
T = 1 the loader's rule gives a row group of 8 CTAs (`launch_grid`: one group a launched row);
the empty kernels are also timed at the whole wave (2 CTAs an SM, in groups of 8), where all
but the first group exit at once.

    python benchmarks/split_floor.py build build/split-floor                        (here)
    PYTHONPATH=. python benchmarks/split_floor.py measure build/split-floor --out F.json   (GPU host)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.split_floor_kernels import (
    ARCH,
    HEAD,
    PROBES,
    REAL,
    SHIPPED_RESIDENT,
    SPEC,
    WAVE,
    kernel_source,
)
from compressc.specs.abi import abi
from compressc.specs.launch import launch_grid


def _params() -> list[dict]:
    return [{"align": p.align, "dtype": p.dtype, "kind": p.kind, "name": p.name} for p in abi(SPEC)]


def _facts(report) -> dict:
    names = ("registers", "smem_static", "spill_stores", "spill_loads", "stack")
    return {n: getattr(report, n) for n in names}


def build(out: Path, names: Sequence[str] = tuple(PROBES), real: Sequence[str] = tuple(REAL)) -> int:
    """Compile the probes (and the real kernels) into `out`: <slug>.cubin, .json and .ptx each."""
    from compressc.driver.compile import compile_source

    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        started, probe = time.perf_counter(), PROBES[name]
        art = compile_source(kernel_source(name), ARCH)  # CompileError on any spill or stack
        manifest = {"arch": ARCH, "block": list(art.block), "cubin": f"{probe.slug}.cubin",
                    "entry": art.entry, "grid": probe.grid.spelling(), "key": f"split-floor-{probe.slug}",
                    "smem_dynamic": 0, "params": _params(), "probe": name, **_facts(art.report)}
        _write(out, probe.slug, manifest, art.cubin, art.ptx, time.perf_counter() - started)
    for name in real:
        _build_real(out, name)
    return 0


def _build_real(out: Path, name: str) -> None:
    from compressc.driver.build import entry_files
    from compressc.driver.compile import compile_source
    from compressc.driver.plan import plan

    started, slug = time.perf_counter(), real_slug(name)
    p = plan(SPEC, ARCH, REAL[name])
    manifest, files = entry_files(p, compile_source(p.source, p.arch))
    manifest = dict(manifest, cubin=f"{slug}.cubin", probe=name)
    _write(out, slug, manifest, files["kernel.cubin"], files["kernel.ptx"], time.perf_counter() - started)


def real_slug(name: str) -> str:
    return "real-" + name.replace(" ", "-")


def _write(out: Path, slug: str, manifest: dict, cubin: bytes, ptx: str, seconds: float) -> None:
    (out / f"{slug}.cubin").write_bytes(cubin)
    (out / f"{slug}.ptx").write_text(ptx)
    (out / f"{slug}.json").write_text(json.dumps(manifest, indent=1))
    print(f"{manifest['probe']:<30}{manifest['grid']:<16}{manifest['registers']:>4} registers "
          f"{manifest['smem_static']:>6} B smem  {seconds:.1f} s", flush=True)


def slugs() -> list[str]:
    return [p.slug for p in PROBES.values()] + [real_slug(n) for n in REAL]


# -- measure (GPU host: torch, the runtime; no cutlass) ------------------------------------------
@dataclass(frozen=True)
class Row:
    probe: str
    ctas: int
    cluster: int
    manifest: dict
    kernel: object  # a LoadedKernel (anything with .launch(grid, params))


def t1_grid(kernel) -> int:
    """CTAs of a launch at T = 1 under the kernel's own rule, as `launch_rows(1, ...)` gives."""
    return launch_grid(kernel.grid, 1, kernel.sm_count, kernel.resident, kernel.max_clusters)


def wave_grid(kernel) -> int:
    """CTAs of the shipped kernel's whole wave: 2 an SM in groups of 8 (clusters capped by the
    driver's count of co-resident clusters of this kernel)."""
    many = kernel.sm_count * 8
    return launch_grid(kernel.grid, many, kernel.sm_count, SHIPPED_RESIDENT, kernel.max_clusters)


def plan_rows(manifests: dict[str, dict], load: Callable[[dict], object]) -> list[Row]:
    """The timed rows: every kernel at T = 1's grid, the empty ones at the whole wave too."""
    rows = []
    for slug in slugs():
        manifest = manifests[slug]
        kernel = load(manifest)
        name = manifest["probe"]
        grids = (t1_grid(kernel), wave_grid(kernel)) if name in WAVE else (t1_grid(kernel),)
        rows += [Row(name, g, kernel.cluster, manifest, kernel) for g in grids]
    return rows


def time_rows(rows: Sequence[Row], packed: Sequence, reps: int, timer: Callable) -> list[dict]:
    """Per row, the JSON result: `timer` (compressc.tune.measure.time_interleaved) runs the rows'
    calls interleaved batch by batch over the rotating `packed` parameters."""
    calls = [lambda p, r=r: r.kernel.launch(r.ctas, p) for r in rows]
    times = timer(calls, packed, reps)
    out = []
    for row, t in zip(rows, times, strict=True):
        q = statistics.quantiles(t, n=10)
        m = row.manifest
        out.append({"probe": row.probe, "ctas": row.ctas, "cluster": row.cluster, "grid": m["grid"],
                    "median_us": round(statistics.median(t), 3), "p10_us": round(q[0], 3),
                    "p90_us": round(q[-1], 3), "min_us": round(min(t), 3), "reps": len(t),
                    "registers": m["registers"], "smem_static": m["smem_static"],
                    "resident": row.kernel.resident, "max_clusters": row.kernel.max_clusters})
    return out


def table(results: Sequence[dict]) -> str:
    """The plain-text table: each row's median, spread and its step over `empty` at T = 1; `res` the
    CTAs an SM holds of it, `mcl` the clusters the driver co-schedules (0: not a cluster kernel)."""
    base = results[0]["median_us"]
    lines = [f"{'probe':<30}{'CTAs':>5}{'clu':>4}{'median':>8}{'p10':>7}{'p90':>7}{'+empty':>8}"
             f"{'regs':>6}{'smem':>7}{'res':>4}{'mcl':>4}"]
    for r in results:
        lines.append(f"{r['probe']:<30}{r['ctas']:>5}{r['cluster']:>4}{r['median_us']:>8.2f}{r['p10_us']:>7.2f}"
                     f"{r['p90_us']:>7.2f}{r['median_us'] - base:>+8.2f}{r['registers']:>6}"
                     f"{r['smem_static']:>7}{r['resident']:>4}{r['max_clusters']:>4}")
    return "\n".join(lines)


def packed_inputs() -> list:
    """The tuner's decode T = 1 inputs for c128a_split, packed in its ABI (which every probe takes):
    state pages and page tables rotated over 256 MB, the runtime's zeroed split workspace."""
    from compressc.tune import measure as tm
    from compressc.tune.cases import Case

    return tm._Inputs(SPEC, Case("decode", 1)).packed(SPEC)


def measure(root: Path, reps: int, out: Path | None) -> int:
    import torch

    from compressc.runtime.c128a_split import split_workspace
    from compressc.runtime.loader import load_kernel
    from compressc.runtime.resolve import KernelImage
    from compressc.tune import measure as tm

    torch.cuda.init()
    device = torch.cuda.current_device()
    manifests = {s: json.loads((root / f"{s}.json").read_text()) for s in slugs()}

    def load(m: dict):
        return load_kernel(KernelImage(m, (root / m["cubin"]).read_bytes(), str(root)), device)

    rows = plan_rows(manifests, load)
    packed = packed_inputs()
    for row in rows:  # warm-up; a failing launch surfaces at the synchronize
        row.kernel.launch(row.ctas, packed[0])
    torch.cuda.synchronize()
    counter = split_workspace(torch.device("cuda", device), 1, HEAD)[0, 0].view(torch.int32).item()
    results = time_rows(rows, packed, reps, tm.time_interleaved)
    print(f"{torch.cuda.get_device_name()}, driver {tm.driver_version()}: decode T = 1, {reps} reps, "
          f"{len(packed)} rotated input sets; workspace counter after the warm-up: {counter} (0: wrapped)")
    print(table(results))
    if out is not None:
        doc = {"format": 1, "gpu": torch.cuda.get_device_name(), "driver": tm.driver_version(),
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "reps": reps,
               "counter_after_warmup": counter, "rows": results}
        out.write_text(json.dumps(doc, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["build", "measure"])
    ap.add_argument("dir", type=Path, help="where `build` writes the cubins and `measure` reads them")
    ap.add_argument("--reps", type=int, default=256)
    ap.add_argument("--out", type=Path, help="measure: write the rows as JSON here")
    args = ap.parse_args(argv)
    return build(args.dir) if args.step == "build" else measure(args.dir, args.reps, args.out)


if __name__ == "__main__":
    sys.exit(main())
