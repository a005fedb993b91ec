"""Realistic random launches of the compressor kernels (docs/kernels.md §2 inputs, §6 coverage).

`make_scenario(spec, kind, T)` builds every input tensor of one launch, deterministic
by seed (all random numbers come from a CPU torch.Generator, then move to the device):

- "prefill": one sequence, positions 0..T-1;
- "chunked": one sequence resuming mid-sequence at an unaligned offset;
- "decode":  T requests of one boundary token each, every kv slot distinct (for C4
  request 0 sits at p = 3, the sequence start with absent window rows);
- "mixed":   several requests with scattered page tables, trailing padding rows
  (slot_mapping = -1, yet a request, a boundary position and a real row's kv slot,
  so a kernel that ignores the padding rule overwrites that row with other bytes),
  some boundary rows with kv slot -1, and for C4 request 0 starting at p = 0.

Non-boundary rows carry the kv slot of the compressed token they will feed
(c = p // r), so they collide with the boundary row that owns it; pass
`nonboundary_kv="none"` for -1 instead. Each request owns its state and kv pages,
drawn from a shuffled pool with spare pages that nothing touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressc import reference
from compressc.scenario_values import (  # noqa: F401  (cos_sin_cache, page_bytes: public here)
    ROPE_BASE,
    _kv_page,
    _state_cache,
    _state_page,
    _tensors,
    cos_sin_cache,
    page_bytes,
)
from compressc.specs import KernelSpec

KINDS = ("prefill", "chunked", "decode", "mixed")
SENTINEL = 0xA5


@dataclass
class Scenario:
    """All inputs of one launch; `state_cache` is None for c128a_store (it does not pool)."""

    spec: KernelSpec
    kind: str
    state_cache: torch.Tensor | None
    token_to_req_indices: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_table: torch.Tensor
    block_size: int
    rms_norm_weight: torch.Tensor
    rms_norm_eps: float
    cos_sin_cache: torch.Tensor
    k_cache: torch.Tensor
    kv_slot_mapping: torch.Tensor
    kv_cache_block_size: int
    compressed_kv: torch.Tensor
    kv_block_table: torch.Tensor
    fp8_scale: torch.Tensor | None = None  # the full_fp8 cache's per-tensor scale (fp32 [1])

    @property
    def T(self) -> int:
        return self.slot_mapping.shape[0]

    @property
    def num_pages(self) -> int:
        return self.k_cache.shape[0]

    @property
    def page_bytes(self) -> int:
        return self.k_cache.stride(0)

    def poisoned_cache(self, sentinel: int = SENTINEL) -> torch.Tensor:
        """A fresh k_cache of the same shape with every byte set to `sentinel`."""
        return torch.full_like(self.k_cache, sentinel)

    def poisoned_compressed_kv(self, sentinel: int = SENTINEL) -> torch.Tensor:
        """A fresh fp32 [T, head] whose every byte is `sentinel` (the c128a_compress output)."""
        raw = torch.full((self.T, self.spec.head * 4), sentinel, dtype=torch.uint8, device=self.device)
        return raw.view(torch.float32)

    @property
    def device(self) -> torch.device:
        return self.slot_mapping.device

    def args(self, out: torch.Tensor | None = None) -> tuple:
        """The kernel's arguments in vLLM op order (docs/kernels.md §2); `out` replaces its output tensor."""
        common = (self.token_to_req_indices, self.positions, self.slot_mapping)
        kind = self.spec.kernel
        if kind == "c128a_compress":
            kv = self.compressed_kv if out is None else out
            return (self.state_cache, *common, self.block_table, self.block_size, kv, self.kv_slot_mapping)
        cache = self.k_cache if out is None else out
        tail = (self.rms_norm_weight, self.rms_norm_eps, self.cos_sin_cache, cache, self.kv_slot_mapping)
        if kind == "c128a_store":
            return (self.compressed_kv, *common, *tail, self.kv_cache_block_size)
        return (self.state_cache, *common, self.block_table, self.block_size, *tail, self.kv_cache_block_size)

    def op_kwargs(self) -> dict:
        """The runtime op's keywords for this spec's format (cache_format and fp8_scale of the
        main KV ops, rotate of the indexers), besides head_size and quant_block."""
        spec = self.spec
        kwargs: dict = {"head_size": spec.head, "quant_block": spec.quant_block}
        if spec.kernel in ("c4a", "c128a_store", "c128a_split"):
            kwargs["cache_format"] = spec.cache_format
            if self.fp8_scale is not None:
                kwargs["fp8_scale"] = self.fp8_scale
        elif spec.kernel.startswith("indexer"):
            kwargs["rotate"] = spec.rotate
        return kwargs

    def typed(self, cache: torch.Tensor) -> torch.Tensor:
        """`cache` (uint8) as vLLM hands it over: a full cache as its bf16 / fp8 [pages, B, head]."""
        dtype = {"full_bf16": torch.bfloat16, "full_fp8": torch.float8_e4m3fn}.get(self.spec.cache_format)
        return cache if dtype is None else cache.view(dtype)

    def run_reference(self, sentinel: int = SENTINEL) -> torch.Tensor:
        """The reference output written over a sentinel-poisoned copy of the output tensor."""
        pooled_only = self.spec.kernel == "c128a_compress"
        out = self.poisoned_compressed_kv(sentinel) if pooled_only else self.poisoned_cache(sentinel)
        entry = {
            "c4a": reference.compress_fused,
            "c128a_split": reference.compress_fused,
            "indexer_fp8": reference.compress_fused,
            "indexer_mxfp4": reference.compress_fused,
            "c128a_compress": reference.c128a_compress,
            "c128a_store": reference.c128a_store,
        }[self.spec.kernel]
        extra = {"fp8_scale": self.fp8_scale} if self.fp8_scale is not None else {}
        entry(self.spec, *self.args(out), **extra)
        return out

    def active(self) -> torch.Tensor:
        """bool[T] mask of the rows that write (docs/kernels.md §3 step 1)."""
        return reference.active_rows(
            self.spec,
            self.T,
            self.token_to_req_indices,
            self.positions,
            self.slot_mapping,
            self.kv_slot_mapping,
        )


def make_scenario(
    spec: KernelSpec,
    kind: str,
    T: int,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    weight_dtype: str | None = None,
    tiny_block: bool = False,
    max_position: int = 2048,
    nonboundary_kv: str = "collide",
    short_positions: bool = False,
    fp8_scale: float = 0.37,
) -> Scenario:
    """Build one launch of `spec` with T rows (see the module docstring for the kinds).

    tiny_block: shrink one quant block below amax 0.0448 so the scale floor applies
    (kv scaled by 1e-4; for the indexer, whose block is the whole RMS-normed head, the
    weight is scaled by 1e-5 instead). short_positions: drop the last positions entry
    (that row then has no position). weight_dtype overrides spec.weight_dtype. fp8_scale:
    the full_fp8 cache's per-tensor scale (vLLM passes 1.0; the default tests the product rule).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {', '.join(KINDS)}")
    if spec.state_layout == "ring":  # docs/kernels.md §10: its own inputs (compressc.scenarios_ring)
        from compressc.scenarios_ring import ring_scenario

        return ring_scenario(spec, kind, T, device=device, seed=seed)
    if T < 1:
        raise ValueError(f"T={T}: a launch has at least one row")
    if nonboundary_kv not in ("collide", "none"):
        raise ValueError(f"nonboundary_kv={nonboundary_kv!r}: must be 'collide' or 'none'")
    gen = torch.Generator().manual_seed(seed)
    requests, pad = _plan(spec, kind, T, gen, max_position)
    rows = _rows(spec, requests, pad, gen, kind, nonboundary_kv)
    if short_positions:
        rows["positions"] = rows["positions"][:-1]
    cpu = _tensors(spec, rows, gen, weight_dtype or spec.weight_dtype, tiny_block)
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cpu.items()}
    state = _state_cache(spec, rows["num_state_pages"], gen, tiny_block, device) if spec.pools else None
    if spec.format is not None and spec.format.scale_operand:
        # not a power of two: the kernel multiplies by RN(1 / scale), never divides
        moved["fp8_scale"] = torch.tensor([fp8_scale], dtype=torch.float32, device=device)
    return Scenario(spec=spec, kind=kind, state_cache=state, **moved)


# -- request plans --------------------------------------------------------------------
def _plan(spec: KernelSpec, kind: str, T: int, gen: torch.Generator, max_position: int) -> tuple[list, int]:
    """[(start, length)] per request and the number of trailing padding rows."""
    r = spec.ratio
    kmax = max(2, max_position // r)
    if kind == "prefill":
        return [(0, T)], 0
    if kind == "chunked":
        return [(r * _randint(gen, 1, 6) + _randint(gen, 1, r), T)], 0
    if kind == "decode":
        ks = [_randint(gen, 0, kmax) for _ in range(T)]
        if spec.overlap:
            ks[0] = 0  # p = 3: the C4 sequence start, half the window absent
        return [(r * k + r - 1, 1) for k in ks], 0
    pad = max(1, T // 8) if T >= 2 else 0
    n_req = max(1, min(4, (T - pad) // 2))
    first = min(r, T - pad - (n_req - 1)) if spec.overlap else 1
    lengths = _split(T - pad, n_req, first, gen)
    starts = [
        0 if spec.overlap and i == 0 else _start_with_boundary(r, n, kmax, gen) for i, n in enumerate(lengths)
    ]
    return list(zip(starts, lengths, strict=True)), pad


def _start_with_boundary(r: int, length: int, kmax: int, gen: torch.Generator) -> int:
    """A start position whose chunk of `length` tokens contains a boundary token."""
    boundary = r * _randint(gen, 1, kmax) + r - 1
    return max(0, boundary - _randint(gen, 0, length))


def _split(total: int, parts: int, first_min: int, gen: torch.Generator) -> list[int]:
    """`parts` positive lengths summing to total, the first at least first_min."""
    base = [first_min] + [1] * (parts - 1)
    extra = total - sum(base)
    cuts = sorted(_randint(gen, 0, extra + 1) for _ in range(parts - 1))
    shares = [b - a for a, b in zip([0, *cuts], [*cuts, extra], strict=True)]
    return [b + s for b, s in zip(base, shares, strict=True)]


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi) (hi > lo)."""
    return int(torch.randint(lo, hi, (1,), generator=gen))


# -- rows, page tables, slots ---------------------------------------------------------
def _rows(
    spec: KernelSpec, requests: list, pad: int, gen: torch.Generator, kind: str, nonboundary: str
) -> dict:
    """Per-row index tensors (int64 on CPU) plus both page tables."""
    r, W, Bs, B = spec.ratio, spec.window, _state_page(spec), _kv_page(spec)
    req = torch.cat([torch.full((n,), i) for i, (_, n) in enumerate(requests)])
    pos = torch.cat([torch.arange(s, s + n) for s, n in requests])
    state_need = [range(max(0, s - (W - 1)) // Bs, (s + n - 1) // Bs + 1) for s, n in requests]
    kv_need = [range(s // r // B, (s + n - 1) // r // B + 1) for s, n in requests]
    state_bt, n_state = _page_table(state_need, gen)
    kv_bt, n_kv = _page_table(kv_need, gen)
    slot = state_bt[req, pos // Bs].long() * Bs + pos % Bs
    c = pos // r
    kv_slot = kv_bt[req, c // B].long() * B + c % B
    boundary = (pos + 1) % r == 0
    if nonboundary == "none":
        kv_slot = torch.where(boundary, kv_slot, -1)
    if kind == "mixed":
        kv_slot = _drop_some(kv_slot, boundary, gen)
    req, pos, slot, kv_slot = _append_padding(spec, req, pos, slot, kv_slot, boundary, pad)
    return {
        "token_to_req_indices": req.int(),
        "positions": pos,
        "slot_mapping": slot,
        "kv_slot_mapping": kv_slot,
        "block_table": state_bt,
        "kv_block_table": kv_bt,
        "num_state_pages": n_state,
        "num_pages": n_kv,
    }


def _page_table(need: list[range], gen: torch.Generator, spare: int = 2) -> tuple[torch.Tensor, int]:
    """Scatter each request's logical pages over a shuffled pool with `spare` unused pages.

    Entries a request never reads point at its own first page (entries must be >= 0).
    """
    total = sum(len(pages) for pages in need) + spare
    perm = torch.randperm(total, generator=gen)
    table = torch.zeros((len(need), max(p.stop for p in need)), dtype=torch.int32)
    used = 0
    for i, pages in enumerate(need):
        table[i, :] = perm[used]
        table[i, pages.start : pages.stop] = perm[used : used + len(pages)].int()
        used += len(pages)
    return table, total


def _drop_some(kv_slot: torch.Tensor, boundary: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Give about a quarter of the boundary rows (at least one if two exist) kv slot -1."""
    idx = boundary.nonzero().squeeze(1)
    if idx.numel() < 2:
        return kv_slot
    pick = idx[torch.randperm(idx.numel(), generator=gen)[: max(1, idx.numel() // 4)]]
    kv_slot = kv_slot.clone()
    kv_slot[pick] = -1
    return kv_slot


def _append_padding(
    spec: KernelSpec,
    req: torch.Tensor,
    pos: torch.Tensor,
    slot: torch.Tensor,
    kv_slot: torch.Tensor,
    boundary: torch.Tensor,
    pad: int,
) -> tuple[torch.Tensor, ...]:
    """Padding rows: slot -1, but otherwise a plausible boundary row aimed at a real kv slot.

    They copy the last storing boundary row's request and kv slot at the previous
    boundary position of that request, so a kernel that ignores slot_mapping writes
    different bytes over that real row.
    """
    if pad == 0:
        return req, pos, slot, kv_slot
    storing = (boundary & (kv_slot >= 0)).nonzero().squeeze(1)
    t = int(storing[-1]) if storing.numel() else 0
    p = int(pos[t]) - spec.ratio if int(pos[t]) >= 2 * spec.ratio - 1 else int(pos[t])
    req = torch.cat((req, torch.full((pad,), int(req[t]), dtype=req.dtype)))
    pos = torch.cat((pos, torch.full((pad,), max(p, 0))))
    slot = torch.cat((slot, torch.full((pad,), -1)))
    kv_slot = torch.cat((kv_slot, torch.full((pad,), max(int(kv_slot[t]), 0))))
    return req, pos, slot, kv_slot
