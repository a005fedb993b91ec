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
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from compressc.specs.abi import abi, split_workspace_row
from compressc.specs.family import make_spec
from compressc.specs.launch import GridRule, launch_grid

ARCH, HEAD, SPLIT = "sm_90a", 512, 8
WS_ROW_BYTES = split_workspace_row(HEAD) * 4  # one launched row's region of the split workspace
CACHE_ROW = 656  # bytes of one fp8_ds_mla cache row: 41 x 16-byte stores
SHIPPED_RESIDENT = 2  # CTAs an SM of the shipped kernel (its occupancy hint): the wave's size
SPEC = make_spec("c128a_split", HEAD, 64, weight_dtype="f32")
REAL = {  # the real kernels, built from the compiler: name -> pipeline
    "shipped split8": "default",
    "cluster8 occ2": "thread-map{cluster-split=8},vectorize,lower-reduction,plan-smem,rows-in-flight,"
                     "page-lookup,rescale,operand-loads,occupancy,cache-hints,overlap-launch",
}
NEVER = "Float32(1.2345e-30)"  # a value the sums never take: a store under it keeps them alive
FOLD = """\
m_new = ops.fmax({q}M[e], {m})
alpha = ops.ex2(({q}M[e] - m_new) * LOG2E)
beta = ops.ex2(({m} - m_new) * LOG2E)
{q}L[e] = {q}L[e] * alpha + {l} * beta
{q}A[e] = {q}A[e] * alpha + {a} * beta
{q}M[e] = m_new
"""


def _under(text: str, depth: int) -> str:
    return textwrap.indent(text, "    " * depth)


def _fold(q: str, parts: Sequence[str], depth: int) -> str:
    """Fold the partial (max, sum, weighted sum) = `parts` into q's, as the real merge does."""
    m, lsum, a = parts
    return _under(FOLD.format(q=q, m=m, l=lsum, a=a), depth)


def _keep(q: str, n: int, depth: int) -> str:
    terms = " + ".join(f"{q}{p}[{e}]" for p in "MLA" for e in range(n))
    text = f"if {terms} == {NEVER}:  # never: keeps every value\n"
    return _under(text + f"    ops.st_global_b32(k_cache.toint(), ops.f32_bits({q}L[0]))\n", depth)


def _publish(name: str, part: int) -> str:
    words = ", ".join(f"ops.f32_bits({name}[{e}])" for e in range(4))
    return f"    ops.st_global_v4(ws_row + ({4 + part * HEAD} + rank * 1536 + col) * 4, {words})\n"


META = f"""\
if warp == 0:
    pos = cute.make_tensor(positions, cute.make_layout(num_positions))[row]
    req = cute.make_tensor(token_to_req_indices, cute.make_layout(num_rows))[row]
    mBT = cute.make_tensor(block_table + req * block_table_stride, cute.make_layout(block_table_stride))
    q = pos - 127 + rank * 16 + lane % 16
    page = Int64(mBT[Int32(q >> state_block_shift)])
    base = page * state_page_stride + (q & ((Int64(1) << state_block_shift) - 1)) * 1024 + lane // 16 * 512
    v, = ops.ld_stream(state_cache.toint() + base * 4, 1)
    if v == {NEVER}:  # never: keeps the chain
        ops.st_global_b32(k_cache.toint(), ops.f32_bits(v))
"""

# the real kernel's gather: lane i < 8 looks up its group's window row i's page (one round trip),
# each load takes its row's page by shuffle; 16 x 128-bit loads a lane before the first use
WINDOW = """\
pos = cute.make_tensor(positions, cute.make_layout(num_positions))[row]
req = cute.make_tensor(token_to_req_indices, cute.make_layout(num_rows))[row]
s0 = pos - 127 + rank * 16 + group * 8
mBT = cute.make_tensor(block_table + req * block_table_stride, cute.make_layout(block_table_stride))
in_page = (Int64(1) << state_block_shift) - 1
wpage = Int32(0)
if lane < 8:
    wpage = mBT[Int32((s0 + lane) >> state_block_shift)]
rKV = cute.make_rmem_tensor(cute.make_layout((4, 8)), Float32)
rSC = cute.make_rmem_tensor(cute.make_layout((4, 8)), Float32)
for r in range_constexpr(8):
    page = Int64(ops.shfl_idx(wpage, Int32(r)))
    base = page * state_page_stride + ((s0 + r) & in_page) * 1024 + col
    v0, v1, v2, v3, = ops.ld_stream(state_cache.toint() + base * 4, 4)
    rKV[0, r] = v0; rKV[1, r] = v1; rKV[2, r] = v2; rKV[3, r] = v3
    v0, v1, v2, v3, = ops.ld_stream(state_cache.toint() + (base + 512) * 4, 4)
    rSC[0, r] = v0; rSC[1, r] = v1; rSC[2, r] = v2; rSC[3, r] = v3
rM = cute.make_rmem_tensor(cute.make_layout(4), Float32)
rL = cute.make_rmem_tensor(cute.make_layout(4), Float32)
rA = cute.make_rmem_tensor(cute.make_layout(4), Float32)
"""

SUM = """\
for e in range_constexpr(4):
    rM[e] = rSC[e, 0]
    rL[e] = rSC[e, 0]
    rA[e] = rKV[e, 0]
    for r in range_constexpr(1, 8):
        rM[e] = ops.fmax(rM[e], rSC[e, r])
        rL[e] = rL[e] + rSC[e, r]
        rA[e] = rA[e] + rKV[e, r]
"""

SOFTMAX = """\
for e in range_constexpr(4):
    m_new = Float32(-float("inf"))
    for r in range_constexpr(8):
        m_new = ops.fmax(m_new, rSC[e, r])
    rM[e] = m_new
    rL[e] = Float32(0.0)
    rA[e] = Float32(0.0)
    for r in range_constexpr(8):
        p = ops.ex2((rSC[e, r] - m_new) * LOG2E)
        rL[e] = rL[e] + p
        rA[e] = rA[e] + p * rKV[e, r]
"""

GROUPS = """\
if group > 0:
    for e in range_constexpr(4):
        sBuf[512 + col + e] = rM[e]
        sBuf[1536 + col + e] = rL[e]
        sBuf[2560 + col + e] = rA[e]
cute.arch.sync_threads()
if group == 0:
    for e in range_constexpr(4):
""" + _fold("r", [f"sBuf[{512 + 1024 * k} + col + e]" for k in range(3)], 2)

GLOBAL = f"""\
ws_row = split_workspace.toint() + Int64(row) * {WS_ROW_BYTES}
if group == 0:
{_publish("rM", 0)}{_publish("rL", 1)}{_publish("rA", 2)}\
ops.fence_gpu()  # this thread's partial before the CTA's arrival
cute.arch.sync_threads()
if tidx == 0:
    sBuf[3072] = Float32(ops.arrive_count(ws_row, {SPLIT - 1}))  # atom.inc wraps to 0 on the last
    ops.fence_gpu()
cute.arch.sync_threads()
if sBuf[3072] == Float32({SPLIT - 1}):  # the last arrival reads the 8 partials back from L2
    mcol = tidx * 2
    rP = cute.make_rmem_tensor(cute.make_layout((2, 3, {SPLIT})), Float32)
    for k in range_constexpr({SPLIT}):
        for part in range_constexpr(3):
            p0, p1, = ops.ld_l2(ws_row + (4 + k * 1536 + part * 512 + mcol) * 4, 2)
            rP[0, part, k] = p0
            rP[1, part, k] = p1
    qM = cute.make_rmem_tensor(cute.make_layout(2), Float32)
    qL = cute.make_rmem_tensor(cute.make_layout(2), Float32)
    qA = cute.make_rmem_tensor(cute.make_layout(2), Float32)
    for e in range_constexpr(2):
        qM[e] = rP[e, 0, 0]
        qL[e] = rP[e, 1, 0]
        qA[e] = rP[e, 2, 0]
    for k in range_constexpr(1, {SPLIT}):
        for e in range_constexpr(2):
""" + _fold("q", [f"rP[e, {k}, k]" for k in range(3)], 3)

STORE = f"""\
if tidx < {CACHE_ROW // 16}:  # the cache row, L2 evict_last as the real row store
    ops.st_global_v4(k_cache.toint() + tidx * 16, ops.f32_bits(qL[0]), ops.f32_bits(qL[1]),
                     ops.f32_bits(qA[0]), ops.f32_bits(qA[1] + qM[0] + qM[1]), keep=True)
"""

CLUSTER = """\
ops.cluster_sync()  # every CTA's group merge is done: rank 0's slots are free
if (rank > 0) & (group == 0):
    sbuf_at = sBuf.iterator.toint()
    for e in range_constexpr(4):
        ops.st_dsmem_f32(sbuf_at + ((rank - 1) * 512 + col + e) * 4, 0, rM[e])
        ops.st_dsmem_f32(sbuf_at + (3584 + (rank - 1) * 512 + col + e) * 4, 0, rL[e])
        ops.st_dsmem_f32(sbuf_at + (7168 + (rank - 1) * 512 + col + e) * 4, 0, rA[e])
ops.cluster_sync()  # ranks 1..7's partials are visible to rank 0
if (rank == 0) & (group == 0):
    for k in range_constexpr(7):
        for e in range_constexpr(4):
""" + _fold("r", [f"sBuf[{3584 * k} + k * 512 + col + e]" for k in range(3)], 3)


@dataclass(frozen=True)
class Probe:
    slug: str
    body: tuple[str, ...]  # the stages the working row group runs, in order
    cluster: bool = False

    @property
    def smem_floats(self) -> int:
        """The real kernels' smem: 3 x 1024 + 4 (split groups, flag); 7 partials + 4 in a cluster."""
        if not self.body or self.body == (META,):
            return 0
        return 7 * 1536 + 4 if self.cluster else 3076

    @property
    def grid(self) -> GridRule:
        return GridRule("wave", 8, cluster=SPLIT) if self.cluster else GridRule("wave", 8, split=SPLIT)


POOL = (WINDOW, SUM, GROUPS)
PROBES = {
    "empty": Probe("empty", ()),
    "meta": Probe("meta", (META,)),
    "window": Probe("window", (*POOL, "if group == 0:\n" + _keep("r", 4, 1))),
    "window+global": Probe("window-global", (*POOL, GLOBAL + _keep("q", 2, 1))),
    "window+global+store": Probe("window-global-store", (*POOL, GLOBAL + _under(STORE, 1))),
    "window+softmax+global+store": Probe("window-softmax-global-store",
                                         (WINDOW, SOFTMAX, GROUPS, GLOBAL + _under(STORE, 1))),
    "window+cluster": Probe("window-cluster", (*POOL, CLUSTER + _keep("r", 4, 1)), cluster=True),
    "empty+cluster": Probe("empty-cluster", (), cluster=True),
}
WAVE = ("empty", "empty+cluster")  # also timed at the whole wave

_DTYPES = {"f32": "Float32", "i32": "Int32", "i64": "Int64", "u8": "Uint8"}
SOURCE = '''
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, Uint8, range_constexpr

from compressc.kernels import cute_ops as ops

ENTRY = "cutlass_split_floor_{name}"
BLOCK = (256, 1, 1)
LOG2E = 1.4426950408889634


class SplitFloor:
    @cute.jit
    def __call__(self, {signature}):
        self.kernel({names}).launch(grid=[num_rows, 1, 1], block=[256, 1, 1], min_blocks_per_mp=2,
                                    preferred_smem_carveout=-1{cluster})

    @cute.kernel
    def kernel(self, {signature}):
{body}

SplitFloor.kernel.set_name_prefix(ENTRY, remove_cutlass_symbol=True, keep_mangled_name=False)
KERNEL = SplitFloor()


def compile_args():
    gmem = cute.AddressSpace.gmem
    return [{args}]
'''
PROLOGUE = """\
tidx, _, _ = cute.arch.thread_idx()
lane = tidx % 32
warp = tidx // 32
group = tidx // 128  # which half of the CTA's 16 window rows this lane reads
col = (tidx % 128) * 4  # its first channel
bidx, _, _ = cute.arch.block_idx()
rank = {rank}
row = bidx // 8  # the row group: only the first one has a row at T = 1, the rest exit
"""


def _c_type(kind: str) -> str:
    return "cute.Pointer" if kind == "ptr" else _DTYPES[kind]


def _stand_in(kind: str, dtype: str, align: int) -> str:
    if kind == "ptr":
        return f"cute.runtime.make_ptr({_DTYPES[dtype]}, 0, gmem, assumed_align={align})"
    return "Float32(1e-6)" if kind == "f32" else f"{_DTYPES[kind]}(1)"


def kernel_source(name: str) -> str:
    """The CuTe DSL module of probe `name`: the shipped kernel's signature and launch, its body."""
    probe, params = PROBES[name], abi(SPEC)
    return SOURCE.format(
        name=probe.slug.replace("-", "_"),
        signature=", ".join(f"{p.name}: {_c_type(p.kind)}" for p in params),
        names=", ".join(p.name for p in params),
        cluster=", cluster=[8, 1, 1]" if probe.cluster else "",
        body=_under(_body(probe), 2),
        args=", ".join(_stand_in(p.kind, p.dtype, p.align) for p in params))


def _body(probe: Probe) -> str:
    if not probe.body:
        return "pass\n"
    rank = "cute.arch.block_idx_in_cluster()" if probe.cluster else "bidx % 8"
    lines = PROLOGUE.format(rank=rank)
    if probe.smem_floats:
        n = probe.smem_floats
        smem = f"cute.arch.alloc_smem(Float32, {n}, alignment=16)"
        lines += f"sBuf = cute.make_tensor({smem}, cute.make_layout({n}))\n"
    return lines + "if row < num_rows:\n" + _under("".join(probe.body), 1)


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
