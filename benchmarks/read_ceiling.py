"""How fast this GPU *reads* N bytes in the patterns the compressor kernels read them.

The compressor kernels only read (their writes are ~1-2% of the bytes), so the 2 GiB copy of
the benchmark (half read, half write) is not quite their ceiling. This probe times a plain
streaming-read kernel (every thread 8 x 128-bit loads in flight, a grid-stride loop, the sum
stored only if it is impossible) over three patterns:

- `contiguous`: the buffer in order;
- `pages`: 32 KiB pages (a C4A state page) in a pseudo-random order, each read whole;
- `half-pages`: the same pages, every other 2 KiB chunk of each (one stream of a C4 state
  page, as a decode window reads it).

Two steps, as for the kernels (the GPU host has no CuTe DSL):

    python benchmarks/read_ceiling.py build build/read-ceiling                  (here)
    PYTHONPATH=. python benchmarks/read_ceiling.py measure build/read-ceiling   (GPU host)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

THREADS, LOADS = 256, 8  # per thread and iteration: 8 x 16 bytes in flight
PAGE_VEC, CHUNK_VEC = 2048, 128  # 32 KiB page and 2 KiB chunk, in 16-byte vectors
PATTERNS = {  # (the page's chunk that read chunk {c} is, chunks read per page); pages permuted
    "contiguous": None,
    "pages": ("{c} % 16", 16),
    "half-pages": ("({c} % 8) * 2", 8),
}
MIB = (128, 512)  # bytes read per call: about C4A prefill and decode at T = 16384
GRID = "wave:8"  # the launch rule its manifest records: one wave of 8 CTAs per SM
PARAMS = (  # the kernel's signature, as the runtime's argument packer takes it
    ("src", "ptr", "f32", 16), ("dst", "ptr", "f32", 16), ("n4", "i64", "", 0), ("pages", "i64", "", 0))

SOURCE = '''
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int64, range_constexpr

ENTRY = "cutlass_read_ceiling"
BLOCK = ({threads}, 1, 1)


class ReadCeiling:
    @cute.jit
    def __call__(self, src: cute.Pointer, dst: cute.Pointer, n4: Int64, pages: Int64):
        self.kernel(src, dst, n4, pages).launch(grid=[1, 1, 1], block=[{threads}, 1, 1])

    @cute.kernel
    def kernel(self, src: cute.Pointer, dst: cute.Pointer, n4: Int64, pages: Int64):
        tidx, _, _ = cute.arch.thread_idx()
        cta, _, _ = cute.arch.block_idx()
        ctas, _, _ = cute.arch.grid_dim()
        stride = Int64(ctas) * {threads}
        acc = Float32(0.0)
        for it in cutlass.range((n4 + stride * {loads} - 1) // (stride * {loads}), unroll=1):
            r = cute.make_rmem_tensor(cute.make_layout((4, {loads})), Float32)
            for u in range_constexpr({loads}):
                i = it * (stride * {loads}) + Int64(cta) * {threads} + tidx + u * stride
                at = {address}
                if i < n4:
                    v = cute.make_tensor(src + cute.assume(at * 4, divby=4), cute.make_layout(4))
                    cute.autovec_copy(v, r[None, u])
                else:
                    for k in range_constexpr(4):
                        r[k, u] = Float32(0.0)
            for u in range_constexpr({loads}):
                for k in range_constexpr(4):
                    acc = acc + r[k, u]
        if acc == Float32(1.2345e-30):  # never: keeps the loads
            cute.make_tensor(dst, cute.make_layout(1))[0] = acc


ReadCeiling.kernel.set_name_prefix(ENTRY, remove_cutlass_symbol=True, keep_mangled_name=False)
KERNEL = ReadCeiling()


def compile_args():
    gmem = cute.AddressSpace.gmem
    return [cute.runtime.make_ptr(Float32, 0, gmem, assumed_align=16),
            cute.runtime.make_ptr(Float32, 0, gmem, assumed_align=16), Int64(1), Int64(1)]
'''


def kernel_source(pattern: str) -> str:
    """The read kernel of `pattern`: vector i of the read stream -> the vector it loads."""
    if PATTERNS[pattern] is None:
        address = "i"
    else:
        local, per_page = PATTERNS[pattern]
        chunk = f"(i // {CHUNK_VEC})"
        # read chunk c lives in page (c // per_page) * odd mod pages (a permutation: pages is a
        # power of two), at its page-local chunk `local`
        address = (f"({chunk} // {per_page} * 40503 & (pages - 1)) * {PAGE_VEC} + "
                   f"({local.format(c=chunk)}) * {CHUNK_VEC} + i % {CHUNK_VEC}")
    return SOURCE.format(threads=THREADS, loads=LOADS, address=address)


def buffer_bytes(pattern: str, read: int) -> int:
    """Bytes of the buffer a call reading `read` bytes walks (whole pages for the page patterns)."""
    if PATTERNS[pattern] is None:
        return read
    return read * 16 // PATTERNS[pattern][1]


def build(out: Path) -> int:
    from compressc.driver.compile import compile_source

    out.mkdir(parents=True, exist_ok=True)
    for pattern in PATTERNS:
        art = compile_source(kernel_source(pattern), "sm_90a")
        (out / f"{pattern}.cubin").write_bytes(art.cubin)
        manifest = {"arch": "sm_90a", "block": list(art.block), "cubin": f"{pattern}.cubin",
                    "entry": art.entry, "grid": GRID, "key": f"read-ceiling-{pattern}", "smem_dynamic": 0}
        (out / f"{pattern}.json").write_text(json.dumps(manifest, indent=1))
        print(f"{pattern}: {art.report.registers} registers", flush=True)
    return 0


def measure(root: Path, reps: int) -> int:
    import torch

    from benchmarks.bench import Bench, copy_gbps
    from compressc.runtime.loader import load_kernel
    from compressc.runtime.resolve import KernelImage

    torch.cuda.init()
    bench, copy = Bench({}, "sm_90a", reps), copy_gbps()
    print(f"{torch.cuda.get_device_name()}: 2 GiB copy {copy:.0f} GB/s")
    print(f"{'pattern':<12}{'MB read':>9}{'us':>9}{'GB/s':>8}{'% copy':>8}")
    for pattern in PATTERNS:
        manifest = json.loads((root / f"{pattern}.json").read_text())
        kernel = load_kernel(KernelImage(manifest, (root / manifest["cubin"]).read_bytes(), str(root)),
                             torch.cuda.current_device())
        grid = kernel.sm_count * kernel.resident
        for mib in MIB:
            read = mib << 20
            size = buffer_bytes(pattern, read)
            bufs = [torch.randn(size // 4, device="cuda") for _ in range(max(2, (2 << 30) // size))]
            dst = torch.zeros(4, device="cuda")
            calls = [_call(kernel, grid, b, dst, read // 16, size // (PAGE_VEC * 16)) for b in bufs]
            for c in calls[:2]:
                c()
            us = statistics.median(bench.time_calls(calls))
            gbps = read / us / 1e3
            pct = 100 * gbps / copy
            print(f"{pattern:<12}{read / 1e6:>9.1f}{us:>9.2f}{gbps:>8.0f}{pct:>8.1f}", flush=True)
            del bufs, calls
            torch.cuda.empty_cache()
    return 0


def _call(kernel, grid: int, src, dst, n4: int, pages: int):
    from compressc.runtime.args import pack_args
    from compressc.specs.abi import Param

    values = {"src": src.data_ptr(), "dst": dst.data_ptr(), "n4": n4, "pages": max(pages, 1)}
    _, params = pack_args([Param(*p) for p in PARAMS], values)
    return lambda: kernel.launch(grid, params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["build", "measure"])
    ap.add_argument("dir", type=Path, help="where `build` writes the cubins and `measure` reads them")
    ap.add_argument("--reps", type=int, default=48)
    args = ap.parse_args(argv)
    return build(args.dir) if args.step == "build" else measure(args.dir, args.reps)


if __name__ == "__main__":
    sys.exit(main())
