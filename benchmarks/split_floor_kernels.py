"""The split_floor probe's kernels (benchmarks/split_floor.py): the CuTe DSL source of each
piece of c128a_split's chain at decode T = 1, on the shipped kernel's ABI, block and grid rule.

Each probe is the shipped kernel's prologue plus a list of snippets (metadata chain, window
loads, the global or the cluster merge, the row store); `kernel_source(name)` gives one
module that `compressc.driver.compile.compile_source` builds.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from compressc.specs.abi import abi, split_workspace_row
from compressc.specs.family import make_spec
from compressc.specs.launch import GridRule

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
