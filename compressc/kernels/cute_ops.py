"""Device helpers the emitted CuTe DSL kernels call (imports cutlass: build side only).

Each helper is one PTX instruction (or a short fixed sequence) so the emitted kernel
says exactly which hardware operation runs; comments cite the PTX ISA behaviour.
"""

from __future__ import annotations

from cutlass import Float32, Int32, Int64, Uint32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op


def _asm(result_type, args, text: str, constraints: str):
    return llvm.inline_asm(
        result_type,
        args,
        text,
        constraints,
        has_side_effects=False,
        is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT,
    )


def _f(x, loc=None, ip=None):
    return Float32(x).ir_value(loc=loc, ip=ip)


def _i(x, loc=None, ip=None):
    return Int32(x).ir_value(loc=loc, ip=ip)


@dsl_user_op
def ex2(x, *, loc=None, ip=None) -> Float32:
    """2**x with MUFU.EX2 (ex2.approx.ftz.f32: max 2 ulp error, -inf -> +0)."""
    return Float32(_asm(T.f32(), [_f(x, loc, ip)], "ex2.approx.ftz.f32 $0, $1;", "=f,f"))


@dsl_user_op
def rsqrt(x, *, loc=None, ip=None) -> Float32:
    """1/sqrt(x) with MUFU.RSQ (rsqrt.approx.ftz.f32)."""
    return Float32(_asm(T.f32(), [_f(x, loc, ip)], "rsqrt.approx.ftz.f32 $0, $1;", "=f,f"))


@dsl_user_op
def div_rn(a, b, *, loc=None, ip=None) -> Float32:
    """IEEE round-to-nearest division: amax / 448 must not round up past a power of two."""
    args = [_f(a, loc, ip), _f(b, loc, ip)]
    return Float32(_asm(T.f32(), args, "div.rn.f32 $0, $1, $2;", "=f,f,f"))


@dsl_user_op
def fmax(a, b, *, loc=None, ip=None) -> Float32:
    args = [_f(a, loc, ip), _f(b, loc, ip)]
    return Float32(_asm(T.f32(), args, "max.f32 $0, $1, $2;", "=f,f,f"))


@dsl_user_op
def fabs(a, *, loc=None, ip=None) -> Float32:
    return Float32(_asm(T.f32(), [_f(a, loc, ip)], "abs.f32 $0, $1;", "=f,f"))


@dsl_user_op
def bf16x2(lo, hi, *, loc=None, ip=None) -> Uint32:
    """Pack two fp32 as bf16 (RNE), `lo` in bits 0-15: cvt.rn.bf16x2.f32 d, hi, lo."""
    args = [_f(hi, loc, ip), _f(lo, loc, ip)]
    return Uint32(_asm(T.i32(), args, "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f"))


@dsl_user_op
def bf16_round(x, *, loc=None, ip=None) -> Float32:
    """fp32(bf16_rne(x)): convert, then widen the 16 bits back (exact)."""
    text = "{ .reg .b16 h; cvt.rn.bf16.f32 h, $1; mov.b32 $0, {0, h}; }"
    return Float32(_asm(T.f32(), [_f(x, loc, ip)], text, "=f,f"))


@dsl_user_op
def e4m3x2(lo, hi, *, loc=None, ip=None) -> Uint32:
    """Two fp32 -> e4m3 bytes (RNE, satfinite), `lo` in bits 0-7 (zero-extended to 32 bits)."""
    text = "{ .reg .b16 h; cvt.rn.satfinite.e4m3x2.f32 h, $1, $2; cvt.u32.u16 $0, h; }"
    args = [_f(hi, loc, ip), _f(lo, loc, ip)]
    return Uint32(_asm(T.i32(), args, text, "=r,f,f"))


@dsl_user_op
def e2m1x2(lo, hi, *, loc=None, ip=None) -> Uint32:
    """Two fp32 -> e2m1 nibbles (RNE, satfinite), `lo` in bits 0-3 (sm_100a and later: ptxas
    refuses cvt...e2m1x2 for sm_90a)."""
    text = "{ .reg .b8 b; cvt.rn.satfinite.e2m1x2.f32 b, $1, $2; cvt.u32.u8 $0, b; }"
    args = [_f(hi, loc, ip), _f(lo, loc, ip)]
    return Uint32(_asm(T.i32(), args, text, "=r,f,f"))


# |s| thresholds of the e2m1 codes 1..7 (docs/kernels.md §8): > 0.25, >= 0.75, > 1.25,
# >= 1.75, > 2.5, >= 3.5, > 5 (round to nearest, ties to the even code, saturating at 6)
_E2M1_STEPS = (("gt", "3E800000"), ("ge", "3F400000"), ("gt", "3FA00000"), ("ge", "3FE00000"),
               ("gt", "40200000"), ("ge", "40600000"), ("gt", "40A00000"))


@dsl_user_op
def e2m1_sw(x, *, loc=None, ip=None) -> Uint32:
    """fp32 -> one e2m1 nibble in integer logic (any target): the magnitude code counts the
    thresholds |x| passes, bit 3 is x's fp32 sign bit (so -0.0 gives 0x8)."""
    steps = " ".join(f"setp.{cmp}.f32 p, a, 0f{bits}; selp.u32 t, 1, 0, p; add.u32 c, c, t;"
                     for cmp, bits in _E2M1_STEPS)
    text = ("{ .reg .pred p; .reg .f32 a; .reg .b32 c, t; abs.f32 a, $1; mov.u32 c, 0; " + steps +
            " mov.b32 t, $1; shr.u32 t, t, 28; and.b32 t, t, 8; or.b32 $0, c, t; }")
    return Uint32(_asm(T.i32(), [_f(x, loc, ip)], text, "=r,f"))


@dsl_user_op
def pack_u16x2(lo, hi, *, loc=None, ip=None) -> Uint32:
    """lo | hi << 16 in one PRMT."""
    args = [_i(lo, loc, ip), _i(hi, loc, ip)]
    return Uint32(_asm(T.i32(), args, "prmt.b32 $0, $1, $2, 0x5410;", "=r,r,r"))


@dsl_user_op
def f32_bits(x, *, loc=None, ip=None) -> Int32:
    return Int32(_asm(T.i32(), [_f(x, loc, ip)], "mov.b32 $0, $1;", "=r,f"))


@dsl_user_op
def bits_f32(x, *, loc=None, ip=None) -> Float32:
    return Float32(_asm(T.f32(), [_i(x, loc, ip)], "mov.b32 $0, $1;", "=f,r"))


@dsl_user_op
def shfl_xor(x, mask, *, loc=None, ip=None) -> Float32:
    """Butterfly exchange inside the whole warp (shfl.sync.bfly, clamp 31)."""
    args = [_f(x, loc, ip), _i(mask, loc, ip)]
    text = "shfl.sync.bfly.b32 $0, $1, $2, 31, -1;"
    return Float32(_asm(T.f32(), args, text, "=f,f,r"))


@dsl_user_op
def shfl_idx(x, src_lane, *, loc=None, ip=None) -> Int32:
    """The 32-bit value lane `src_lane` holds (shfl.sync.idx, whole warp converged)."""
    args = [_i(x, loc, ip), _i(src_lane, loc, ip)]
    return Int32(_asm(T.i32(), args, "shfl.sync.idx.b32 $0, $1, $2, 0x1f, 0xffffffff;", "=r,r,r"))


@dsl_user_op
def lowest_bit(x, *, loc=None, ip=None) -> Int32:
    """Index of the lowest set bit of a nonzero 32-bit mask (bfind of x & -x)."""
    text = "{ .reg .b32 t; neg.s32 t, $1; and.b32 t, t, $1; bfind.u32 $0, t; }"
    return Int32(_asm(T.i32(), [_i(x, loc, ip)], text, "=r,r"))


@dsl_user_op
def popc(x, *, loc=None, ip=None) -> Int32:
    """Set bits of a 32-bit mask."""
    return Int32(_asm(T.i32(), [_i(x, loc, ip)], "popc.b32 $0, $1;", "=r,r"))


@dsl_user_op
def cp_async_16(smem_addr, gmem_addr, *, loc=None, ip=None) -> None:
    """16 bytes global -> shared without a register (cp.async.cg: cached in L2 only).

    Both addresses 16-byte aligned; completes at the next cp_async_wait that covers
    its commit group. Only the issuing thread may read the bytes after that wait.
    """
    args = [_i(smem_addr, loc, ip), Int64(gmem_addr).ir_value(loc=loc, ip=ip)]
    llvm.inline_asm(None, args, "cp.async.cg.shared.global [$0], [$1], 16;", "r,l,~{memory}",
                    has_side_effects=True)


@dsl_user_op
def cp_async_commit(*, loc=None, ip=None) -> None:
    """Close this thread's group of cp.async copies issued since the last commit."""
    llvm.inline_asm(None, [], "cp.async.commit_group;", "~{memory}", has_side_effects=True)


@dsl_user_op
def cp_async_wait(pending: int, *, loc=None, ip=None) -> None:
    """Wait until at most `pending` (a constant) of this thread's commit groups are in flight."""
    llvm.inline_asm(None, [], f"cp.async.wait_group {int(pending)};", "~{memory}", has_side_effects=True)


# Cache policies (createpolicy, sm_80+; `.L2::cache_hint` takes the 64-bit policy). ptxas
# hoists the createpolicy into one uniform register that every hinted access shares.
_KEEP = "createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
_STREAM = "createpolicy.fractional.L2::evict_first.b64 pol, 1.0; "


def _st(addr, values, width: str, keep: bool, loc, ip) -> None:
    """st.global of `values` (u32 registers) at `addr`; with `keep` the written lines are L2
    evict_last: the kernel's streaming window reads (evict_first) do not push them out, so
    they reach DRAM later in whole lines instead of being written back piecemeal mid-stream."""
    args = [Int64(addr).ir_value(loc=loc, ip=ip)] + [_i(v, loc, ip) for v in values]
    n = len(values)
    regs = "$1" if n == 1 else "{" + ", ".join(f"${k + 1}" for k in range(n)) + "}"
    policy, hint, pol = (".reg .b64 pol; " + _KEEP, ".L2::cache_hint", ", pol") if keep else ("", "", "")
    if width == "b16":
        text = f"{{ .reg .b16 h; {policy}cvt.u16.u32 h, $1; st.global{hint}.b16 [$0], h{pol}; }}"
    else:
        text = f"{{ {policy}st.global{hint}.{width} [$0], {regs}{pol}; }}"
    llvm.inline_asm(None, args, text, "l" + ",r" * n, has_side_effects=True)


@dsl_user_op
def st_global_b8(addr, value, *, keep: bool = False, loc=None, ip=None) -> None:
    _st(addr, [value], "b8", keep, loc, ip)


@dsl_user_op
def st_global_b16(addr, value, *, keep: bool = False, loc=None, ip=None) -> None:
    _st(addr, [value], "b16", keep, loc, ip)


@dsl_user_op
def st_global_b32(addr, value, *, keep: bool = False, loc=None, ip=None) -> None:
    _st(addr, [value], "b32", keep, loc, ip)


@dsl_user_op
def st_global_v2(addr, a, b, *, keep: bool = False, loc=None, ip=None) -> None:
    """8-byte store; `addr` must be 8-byte aligned (the store layout guarantees it)."""
    _st(addr, [a, b], "v2.b32", keep, loc, ip)


@dsl_user_op
def st_global_v4(addr, a, b, c, d, *, keep: bool = False, loc=None, ip=None) -> None:
    """16-byte store; `addr` must be 16-byte aligned."""
    _st(addr, [a, b, c, d], "v4.b32", keep, loc, ip)


@dsl_user_op
def ld_stream(addr, n: int, *, loc=None, ip=None) -> list:
    """`n` (1, 2 or 4) fp32 at `addr` (aligned to 4n bytes), read once: L1::no_allocate and L2
    evict_first, so a window row streamed through the SM displaces neither the L1's metadata
    lines nor the L2's written cache lines."""
    regs = "$0" if n == 1 else "{" + ", ".join(f"${k}" for k in range(n)) + "}"
    vec = "" if n == 1 else f".v{n}"
    load = f"ld.global.L1::no_allocate.L2::cache_hint{vec}.f32 {regs}, [${n}], pol;"
    text = f"{{ .reg .b64 pol; {_STREAM}{load} }}"
    args = [Int64(addr).ir_value(loc=loc, ip=ip)]
    if n == 1:
        out = llvm.inline_asm(T.f32(), args, text, "=f,l", has_side_effects=True)
        return [Float32(out)]
    ty = llvm.StructType.get_literal([T.f32()] * n)
    out = llvm.inline_asm(ty, args, text, ",".join(["=f"] * n) + ",l", has_side_effects=True)
    return [Float32(llvm.extractvalue(T.f32(), out, [k])) for k in range(n)]


@dsl_user_op
def cluster_sync(*, loc=None, ip=None) -> None:
    """Cluster-wide barrier: every thread of every CTA of the cluster arrives (release:
    its earlier shared-memory writes become visible) and waits (acquire). `.aligned`: all
    threads of a warp execute it together, as the emitted kernels call it from CTA-uniform
    code."""
    text = "barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned;"
    llvm.inline_asm(None, [], text, "~{memory}", has_side_effects=True)


@dsl_user_op
def st_dsmem_f32(smem_addr, rank, value, *, loc=None, ip=None) -> None:
    """Store fp32 `value` at this CTA's shared address `smem_addr` in cluster CTA `rank`'s
    shared memory (mapa, then st.shared::cluster); visible to `rank` after a cluster
    barrier (arrive.release here, wait.acquire there)."""
    text = "{ .reg .b32 a; mapa.shared::cluster.u32 a, $0, $1; st.shared::cluster.f32 [a], $2; }"
    args = [_i(smem_addr, loc, ip), _i(rank, loc, ip), _f(value, loc, ip)]
    llvm.inline_asm(None, args, text, "r,r,f,~{memory}", has_side_effects=True)


@dsl_user_op
def prefetch_l2_bulk(gmem_addr, nbytes, *, loc=None, ip=None) -> None:
    """Start a bulk prefetch of `nbytes` at `gmem_addr` into L2 (cp.async.bulk.prefetch.L2,
    sm_90): no register, no completion to wait for; later loads of the range hit L2.
    `gmem_addr` 16-byte aligned, `nbytes` a multiple of 16."""
    args = [Int64(gmem_addr).ir_value(loc=loc, ip=ip), _i(nbytes, loc, ip)]
    llvm.inline_asm(None, args, "cp.async.bulk.prefetch.L2.global [$0], $1;", "l,r", has_side_effects=True)


@dsl_user_op
def record_bounds_error(addr, code, row, value, at, limit, aux, *, loc=None, ip=None) -> None:
    """A checked build's first violation (docs/kernels.md §3, "Checked builds"): claim the record
    at `addr` with atom.global.cas.b32 (0 -> 1: one thread of the launch, and of every later
    launch until the runtime clears it, wins), and only the winner stores the check code and the
    int64 fields behind it, so the record is one violation's, whichever thread got there first."""
    text = ("{ .reg .b32 old; .reg .pred won; atom.global.cas.b32 old, [$0], 0, 1; "
            "setp.eq.b32 won, old, 0; @won st.global.b32 [$0+4], $1; @won st.global.b64 [$0+8], $2; "
            "@won st.global.b64 [$0+16], $3; @won st.global.b64 [$0+24], $4; "
            "@won st.global.b64 [$0+32], $5; @won st.global.b64 [$0+40], $6; }")
    wide = [Int64(v).ir_value(loc=loc, ip=ip) for v in (row, value, at, limit, aux)]
    args = [Int64(addr).ir_value(loc=loc, ip=ip), _i(code, loc, ip), *wide]
    llvm.inline_asm(None, args, text, "l,r,l,l,l,l,l,~{memory}", has_side_effects=True)


@dsl_user_op
def fence_gpu(*, loc=None, ip=None) -> None:
    """fence.acq_rel.gpu: this thread's earlier global writes are ordered before its later
    ones at GPU scope (the CUDA __threadfence()); with a CTA barrier after it, the whole
    CTA's writes are (PTX memory model: the fence and bar.sync are morally strong)."""
    llvm.inline_asm(None, [], "fence.acq_rel.gpu;", "~{memory}", has_side_effects=True)


@dsl_user_op
def arrive_count(addr, last, *, loc=None, ip=None) -> Int32:
    """atom.acq_rel.gpu.global.inc.u32 at `addr` with limit `last`: returns the old count and
    stores old + 1, or 0 once old reaches `last` (PTX `inc` wraps), so the last of last + 1
    arrivals leaves the counter at 0 for the next launch without a separate reset."""
    args = [Int64(addr).ir_value(loc=loc, ip=ip), _i(last, loc, ip)]
    text = "atom.acq_rel.gpu.global.inc.u32 $0, [$1], $2;"
    return Int32(llvm.inline_asm(T.i32(), args, text, "=r,l,r,~{memory}", has_side_effects=True))


@dsl_user_op
def ld_l2(addr, n: int, *, loc=None, ip=None) -> list:
    """`n` (1, 2 or 4) fp32 at `addr` with ld.global.cg: cached in L2 only, so a value another
    CTA wrote is read from L2, never from a stale L1 line."""
    regs = "$0" if n == 1 else "{" + ", ".join(f"${k}" for k in range(n)) + "}"
    vec = "" if n == 1 else f".v{n}"
    text = f"ld.global.cg{vec}.f32 {regs}, [${n}];"
    args = [Int64(addr).ir_value(loc=loc, ip=ip)]
    if n == 1:
        return [Float32(llvm.inline_asm(T.f32(), args, text, "=f,l,~{memory}", has_side_effects=True))]
    ty = llvm.StructType.get_literal([T.f32()] * n)
    out = llvm.inline_asm(ty, args, text, ",".join(["=f"] * n) + ",l,~{memory}", has_side_effects=True)
    return [Float32(llvm.extractvalue(T.f32(), out, [k])) for k in range(n)]
