"""Torch emulation of docs/kernels.md §3-§5: the bytes every compressc kernel must write.

Runs on CPU and CUDA tensors alike and gives the same bits on both: every step is an
IEEE-rounded elementwise fp32 operation, except the two places where a device's own
approximation would leak in, which are evaluated in float64 and rounded once to fp32:

- exp:  e(d) = fp32(exp2_f64(fp32(d * LOG2E_f32)))  (docs/kernels.md §3.3 "exact exp"; d <= 0);
- RMS:  ss = fp32(sum_f64(x_e^2)) (the fp32 squares are exact in float64), then
        rrms = 1 / sqrt(ss / head + eps), each of `/ head`, `+ eps`, `sqrt`, `1 /`
        one IEEE fp32 operation; y_e = (x_e * rrms) * fp32(w_e).

A kernel may differ from these bytes only as docs/kernels.md §6 allows.
Argument lists mirror vLLM's ops (docs/kernels.md §2); `k_cache` is written in place.
"""

from __future__ import annotations

import torch

from compressc.numerics import (
    bf16_rne,
)
from compressc.specs import KernelSpec

LOG2E = 1.4426950408889634
_FUSED = ("c4a", "indexer_fp8", "indexer_mxfp4", "c128a_split")  # c128a_split: C128A in one launch


# -- §3 step 1: which rows write -------------------------------------------------------
def active_rows(
    spec: KernelSpec,
    T: int,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """bool[T]: the row is a non-padding boundary token with a request, position and kv slot.

    A row past the end of any of the index tensors lacks that entry and is inactive;
    a negative request index or position counts as missing.
    """
    device = slot_mapping.device
    p = _padded(positions, T, device)
    req = _padded(token_to_req_indices, T, device)
    boundary = (p >= 0) & (torch.remainder(p + 1, spec.ratio) == 0)
    has_slot = _padded(slot_mapping, T, device) >= 0
    has_kv = _padded(kv_slot_mapping, T, device) >= 0
    return has_slot & (req >= 0) & boundary & has_kv


def _padded(values: torch.Tensor, T: int, device: torch.device) -> torch.Tensor:
    """values[:T] as int64, with -1 for rows the tensor does not reach."""
    out = torch.full((T,), -1, dtype=torch.int64, device=device)
    n = min(T, values.shape[0])
    out[:n] = values[:n].to(device=device, dtype=torch.int64)
    return out


# -- §3 steps 2-3: window and online-softmax pooling ---------------------------------
def pool(
    spec: KernelSpec,
    state_cache: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int | torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """fp32 [len(rows), head]: softmax(score)-weighted kv over each row's window.

    Online softmax over window rows i ascending, per channel, starting from
    m = -inf, l = 0, a = 0; for each present row (score s, value v):
        m' = max(m, s);  alpha = e(m - m');  p = e(s - m')
        l' = l * alpha + p;  a' = a * alpha + p * v        (each op rounded to fp32)
    and finally x = a / l (l, a are `den`, `acc` below). Absent rows (q < 0) leave
    (m, l, a) unchanged.
    """
    bs, head, sw = int(block_size), spec.head, spec.state_width
    req = token_to_req_indices[rows].long()
    s0 = positions[rows].long() - (spec.window - 1)
    shape = (rows.shape[0], head)
    m = torch.full(shape, float("-inf"), dtype=torch.float32, device=state_cache.device)
    den, acc = torch.zeros_like(m), torch.zeros_like(m)
    for i in range(spec.window):
        q = s0 + i
        qc = q.clamp(min=0)
        state = state_cache[block_table[req, qc // bs].long(), qc % bs]
        # Overlap (C4): the first r rows feed stream A, the rest stream B (docs/kernels.md §3.2).
        col = head if spec.overlap and i >= spec.ratio else 0
        kv, score = state[:, col : col + head], state[:, sw + col : sw + col + head]
        m, den, acc = _online_step(m, den, acc, kv.float(), score.float(), (q >= 0)[:, None])
    return acc / den


def _online_step(
    m: torch.Tensor,
    den: torch.Tensor,
    acc: torch.Tensor,
    kv: torch.Tensor,
    score: torch.Tensor,
    present: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m_new = torch.maximum(m, score)
    alpha = exact_exp(m - m_new)  # m = -inf before the first present row: alpha = 0
    p = exact_exp(score - m_new)
    den_new = den * alpha + p
    acc_new = acc * alpha + p * kv
    # where() discards the NaN that (-inf) - (-inf) gives on an absent leading row.
    return (
        torch.where(present, m_new, m),
        torch.where(present, den_new, den),
        torch.where(present, acc_new, acc),
    )


def exact_exp(d: torch.Tensor) -> torch.Tensor:
    """fp32(2^(fp32(d * log2 e))) with the power taken in float64 (device independent)."""
    t = d * torch.tensor(LOG2E, dtype=torch.float32, device=d.device)
    return torch.exp2(t.double()).float()


# -- §3 steps 4-6: RMSNorm, rope, quantisation -----------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 y = (x * rrms) * w with rrms as in the module docstring."""
    x = x.float()
    ss = (x.double() ** 2).sum(dim=-1, keepdim=True).float()
    eps32 = torch.tensor(eps, dtype=torch.float32, device=x.device)
    rrms = 1.0 / torch.sqrt(ss / x.shape[-1] + eps32)
    return (x * rrms) * weight.to(device=x.device, dtype=torch.float32)


def rope_rotate(
    spec: KernelSpec, y_rope: torch.Tensor, positions_of_rows: torch.Tensor, cos_sin_cache: torch.Tensor
) -> torch.Tensor:
    """GPT-J interleaved rotation of fp32 values at P = (p // r) * r, rounded once to bf16.

    Returns fp32 holding bf16 values, in channel order (out_0, out_1, ...).
    """
    half = spec.rope // 2
    P = (positions_of_rows.long() // spec.ratio) * spec.ratio
    cs = cos_sin_cache[P].float()
    c, s = cs[:, :half], cs[:, half : 2 * half]
    a, b = y_rope[:, 0::2], y_rope[:, 1::2]
    out = torch.stack((a * c - b * s, a * s + b * c), dim=-1)
    return bf16_rne(out.reshape(y_rope.shape))


def norm_rope_quant(
    spec: KernelSpec,
    x: torch.Tensor,
    positions_of_rows: torch.Tensor,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    fp8_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(value_bytes uint8[N, token_stride], scale_bytes uint8[N, scale_dim]) of the spec's
    cache format: v = bf16([y_nope | rot(y_rope)]) (then the Hadamard rotation when the spec
    rotates), encoded as docs/kernels.md §4 and §8 say."""
    y = rms_norm(x, rms_norm_weight, float(rms_norm_eps))
    rope = rope_rotate(spec, y[:, spec.nope :], positions_of_rows, cos_sin_cache)

    v = torch.cat((bf16_rne(y[:, : spec.nope]), rope), dim=1)
    if spec.rotate:
        v = hadamard(v)
    store, fmt = spec.store, spec.cache_format
    values = _filled(x.shape[0], store.token_stride, store.pad_byte, x.device)
    scales = _filled(x.shape[0], store.scale_dim, store.pad_byte, x.device)
    if fmt == "fp8_ds_mla":
        codes, e8 = quant_ue8m0(spec, v[:, : spec.nope])
        values[:, : spec.nope] = codes
        values[:, spec.nope : spec.nope + 2 * spec.rope] = _bf16_bytes(rope)
        scales[:, : e8.shape[1]] = e8
    elif fmt == "indexer_fp8":
        codes, scale = quant_f32scale(spec, v)
        values[:, : spec.head] = codes
        scales[:, :4] = scale.contiguous().view(torch.uint8).reshape(-1, 4)
    elif fmt == "indexer_mxfp4":
        values[:, : spec.head // 2], scales[:, : spec.head // 32] = quant_mxfp4(v)
    elif fmt == "full_bf16":
        values[:, :] = _bf16_bytes(v)
    elif fmt == "full_fp8":
        if fp8_scale is None:
            raise ValueError("the full_fp8 cache needs fp8_scale (a float32 tensor of one element)")
        values[:, :] = quant_tensor(v, fp8_scale)
    else:
        raise ValueError(f"store layout {store.name!r} holds no quantised tokens")
    return values, scales


def _filled(n: int, width: int, byte: int, device: torch.device) -> torch.Tensor:
    return torch.full((n, width), byte, dtype=torch.uint8, device=device)


def _bf16_bytes(v: torch.Tensor) -> torch.Tensor:
    """Little-endian bytes of bf16 values (CPUs and GPUs we target are little-endian)."""
    return v.to(torch.bfloat16).contiguous().view(torch.uint8)


# -- §4: byte placement ---------------------------------------------------------------
def store_bytes(
    spec: KernelSpec,
    k_cache: torch.Tensor,
    slots: torch.Tensor,
    value_bytes: torch.Tensor,
    scale_bytes: torch.Tensor,
    kv_cache_block_size: int | torch.Tensor,
) -> None:
    """Write each token's values at base + off*token_stride and scales at
    base + B*token_stride + off*scale_dim."""
    B, ts, sd = int(kv_cache_block_size), spec.store.token_stride, spec.store.scale_dim
    if k_cache.dtype != torch.uint8:
        raise ValueError(f"k_cache must be uint8 (strides are bytes), got {k_cache.dtype}")
    if spec.format is not None and spec.format.row_stride == "runtime":
        ts = k_cache.stride(1)  # a full cache's rows: k_cache.stride(1) bytes apart, no scales
    if B * (ts + sd) > k_cache.stride(0):
        raise ValueError(f"page stride {k_cache.stride(0)} cannot hold {B} tokens of {ts}+{sd} bytes")
    flat = _flat_bytes(k_cache)
    slots = slots.to(device=k_cache.device, dtype=torch.int64)
    base = (slots // B) * k_cache.stride(0)
    off = slots % B
    flat[_span(base + off * ts, value_bytes.shape[1])] = value_bytes
    if sd:
        flat[_span(base + B * ts + off * sd, scale_bytes.shape[1])] = scale_bytes


def _flat_bytes(k_cache: torch.Tensor) -> torch.Tensor:
    """A 1-D byte view of k_cache's storage from its first element on (writes go through)."""
    extent = k_cache.untyped_storage().nbytes() - k_cache.storage_offset()
    return k_cache.as_strided((extent,), (1,))


def _span(start: torch.Tensor, width: int) -> torch.Tensor:
    return start[:, None] + torch.arange(width, device=start.device)


# -- the kernels ----------------------------------------------------------------------
def compress_fused(
    spec: KernelSpec,
    state_cache: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int | torch.Tensor,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
    kv_cache_block_size: int | torch.Tensor,
    fp8_scale: torch.Tensor | None = None,
) -> None:
    """C4A / indexer: pool, norm, rope, quantise and store every active row into k_cache
    (`fp8_scale`: the full_fp8 cache's per-tensor scale)."""
    _require(spec, _FUSED)
    rows = _active_index(spec, slot_mapping, token_to_req_indices, positions, kv_slot_mapping)
    if rows.numel() == 0:
        return
    x = pool(spec, state_cache, token_to_req_indices, positions, block_table, block_size, rows)
    values, scales = norm_rope_quant(spec, x, positions[rows], rms_norm_weight, rms_norm_eps, cos_sin_cache,
                                     fp8_scale)
    store_bytes(spec, k_cache, kv_slot_mapping[rows], values, scales, kv_cache_block_size)


c4a_fused = compress_fused


def c128a_compress(
    spec: KernelSpec,
    state_cache: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int | torch.Tensor,
    compressed_kv: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
) -> None:
    """C128A kernel 1 (docs/kernels.md §5): pooled fp32 rows into compressed_kv[t] for active t only."""
    _require(spec, ("c128a_compress",))
    rows = _active_index(spec, slot_mapping, token_to_req_indices, positions, kv_slot_mapping)
    if rows.numel() == 0:
        return
    x = pool(spec, state_cache, token_to_req_indices, positions, block_table, block_size, rows)
    compressed_kv[rows.to(compressed_kv.device)] = x.to(compressed_kv.device)


def c128a_store(
    spec: KernelSpec,
    compressed_kv: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
    kv_cache_block_size: int | torch.Tensor,
    fp8_scale: torch.Tensor | None = None,
) -> None:
    """C128A kernel 2 (docs/kernels.md §5): norm, rope, quantise and store compressed_kv's active rows."""
    _require(spec, ("c128a_store",))
    rows = _active_index(spec, slot_mapping, token_to_req_indices, positions, kv_slot_mapping)
    if rows.numel() == 0:
        return
    x = compressed_kv[rows].float()
    values, scales = norm_rope_quant(spec, x, positions[rows], rms_norm_weight, rms_norm_eps, cos_sin_cache,
                                     fp8_scale)
    store_bytes(spec, k_cache, kv_slot_mapping[rows], values, scales, kv_cache_block_size)


def _active_index(
    spec: KernelSpec,
    slot_mapping: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
) -> torch.Tensor:
    T = slot_mapping.shape[0]
    mask = active_rows(spec, T, token_to_req_indices, positions, slot_mapping, kv_slot_mapping)
    return mask.nonzero().squeeze(1)


def _require(spec: KernelSpec, kernels: tuple[str, ...]) -> None:
    if spec.kernel not in kernels:
        raise ValueError(
            f"spec.kernel={spec.kernel!r}: this reference entry point handles {', '.join(kernels)}"
        )


# -- the quantisers of each cache format (docs/kernels.md §3.5, §8), the online C128 merge
# (§9.3) and the C128 ring state (§10), in their own modules, re-exported here
from compressc.reference_online import online_c128_merge, online_state_reset  # noqa: E402, F401
from compressc.reference_quant import (  # noqa: E402, F401
    hadamard,
    quant_f32scale,
    quant_mxfp4,
    quant_tensor,
    quant_ue8m0,
)
from compressc.reference_ring import (  # noqa: E402, F401
    c128a_compress_ring,
    ring_capacity,
    ring_rows,
    ring_slots,
    save_ring_tail,
)
