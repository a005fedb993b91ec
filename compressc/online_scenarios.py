"""Realistic steps of the online C128A path (docs/kernels.md §9) for tests, on CPU or GPU tensors.

A step has a few requests, each a sequence start (first position 0), a chunk from the middle of
a sequence or a decode token, in consecutive rows, then padding rows (slot -1, no request). The
running state rows hold plausible (max, sum >= 1, weighted sum) values; kv, score and ape are
fresh random fp32 (never zeros); kv and score may have padded row strides. Rows that compress
get distinct cache slots; some other rows carry a real slot too (a kernel that ignores the
boundary rule overwrites it). `run_reference` is the composition of §9.4 in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressc import reference
from compressc.online import OnlinePlan, plan_online_c128_segments
from compressc.scenarios import SENTINEL, cos_sin_cache, page_bytes
from compressc.specs.family import KernelSpec, make_spec

B = 2  # compressed tokens per page: 256-token pages at ratio 128


@dataclass
class OnlineStep:
    store_spec: KernelSpec
    kv: torch.Tensor
    score: torch.Tensor
    ape: torch.Tensor
    positions: torch.Tensor
    run_state: torch.Tensor
    plan: OnlinePlan
    token_to_req_indices: torch.Tensor
    slot_mapping: torch.Tensor
    rms_norm_weight: torch.Tensor
    rms_norm_eps: float
    cos_sin_cache: torch.Tensor
    k_cache: torch.Tensor
    kv_slot_mapping: torch.Tensor

    @property
    def T(self) -> int:
        return self.kv.shape[0]

    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.plan.tensors(self.kv.device)

    def poisoned(self, like: torch.Tensor, sentinel: int = SENTINEL) -> torch.Tensor:
        """A tensor of `like`'s shape and dtype whose every byte is `sentinel`."""
        size = like.numel() * like.element_size()
        raw = torch.full((size,), sentinel, dtype=torch.uint8, device=like.device)
        return raw.view(like.dtype).view(like.shape)

    def step_args(self, run_state: torch.Tensor, k_cache: torch.Tensor) -> tuple:
        """The positional arguments of `ops.compress_c128a_online`."""
        emit, update, reset = self.tables()
        return (self.kv, self.score, self.ape, self.positions, run_state, emit, update, reset,
                self.token_to_req_indices, self.slot_mapping, self.rms_norm_weight, self.rms_norm_eps,
                self.cos_sin_cache, k_cache, self.kv_slot_mapping, B)

    def active_slots(self) -> torch.Tensor:
        """The kv slots the store writes (the emit rows')."""
        active = reference.active_rows(self.store_spec, self.T, self.token_to_req_indices, self.positions,
                                       self.slot_mapping, self.kv_slot_mapping)
        return self.kv_slot_mapping[active]

    def run_reference(self, run_state: torch.Tensor, k_cache: torch.Tensor,
                      compressed_kv: torch.Tensor) -> None:
        """docs/kernels.md §9.4 in torch: emit segments, update segments, resets, then the store."""
        emit, update, reset = self.plan.tensors("cpu")
        merge_in = (self.kv, self.score, self.ape, self.positions, run_state)
        reference.online_c128_merge(*merge_in, emit, compressed_kv)
        reference.online_c128_merge(*merge_in, update, compressed_kv)
        reference.online_state_reset(run_state, reset, self.store_spec.head)
        reference.c128a_store(self.store_spec, compressed_kv, self.token_to_req_indices, self.positions,
                              self.slot_mapping, self.rms_norm_weight, self.rms_norm_eps, self.cos_sin_cache,
                              k_cache, self.kv_slot_mapping, B)


def make_online_step(T: int, seed: int, device: str | torch.device = "cpu", weight_dtype: str = "bf16",
                     stride_pad: int = 0, state_pad: int = 0) -> OnlineStep:
    """A step of about T request rows plus up to 3 padding rows (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    spec = make_spec("c128a_store", weight_dtype=weight_dtype)
    head = spec.head
    lengths, firsts = _requests(T, gen)
    n_reqs = len(lengths)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    state_rows = torch.randperm(n_reqs + 3, generator=gen)[:n_reqs].tolist()
    seq_lens = [f + n for f, n in zip(firsts, lengths, strict=True)]
    plan = plan_online_c128_segments(starts, seq_lens, state_rows)
    pad = int(torch.randint(0, 4, (1,), generator=gen))
    rows = starts[-1] + pad
    positions = torch.cat([torch.arange(f, f + n) for f, n in zip(firsts, lengths, strict=True)]
                          + [torch.zeros(pad, dtype=torch.int64)])
    req = torch.cat([torch.full((n,), r, dtype=torch.int32) for r, n in enumerate(lengths)]
                    + [torch.full((pad,), -1, dtype=torch.int32)])
    slots = torch.cat([torch.arange(starts[-1]), torch.full((pad,), -1)])
    kv_slots, pages = _kv_slots(positions, req, gen)
    cache = torch.full((pages, B, page_bytes(spec, B) // B), SENTINEL, dtype=torch.uint8)
    wdtype = torch.bfloat16 if weight_dtype == "bf16" else torch.float32
    tensors = dict(
        kv=_rows(rows, head, stride_pad, gen), score=_rows(rows, head, stride_pad, gen, scale=2.0),
        ape=torch.randn(128, head, generator=gen), positions=positions,
        run_state=_run_state(n_reqs + 3, head, state_pad, gen), token_to_req_indices=req, slot_mapping=slots,
        rms_norm_weight=(1 + 0.1 * torch.randn(head, generator=gen)).to(wdtype),
        cos_sin_cache=cos_sin_cache(spec.rope, int(positions.max()) + 1), k_cache=cache,
        kv_slot_mapping=kv_slots,
    )
    moved = {k: _to(v, device) for k, v in tensors.items()}
    return OnlineStep(spec, plan=plan, rms_norm_eps=1e-6, **moved)


def _requests(T: int, gen: torch.Generator) -> tuple[list[int], list[int]]:
    """Chunk lengths summing to about T and each chunk's first position."""
    lengths, firsts = [], []
    while sum(lengths) < T:
        kind = int(torch.randint(0, 3, (1,), generator=gen))
        n = 1 if kind == 2 else int(torch.randint(1, max(2, T - sum(lengths) + 1), (1,), generator=gen))
        n = min(n, T - sum(lengths))
        first = 0 if kind == 0 else int(torch.randint(1, 700, (1,), generator=gen))
        if kind == 1 and int(torch.randint(0, 2, (1,), generator=gen)):  # ends on a boundary: a reset
            first = ((first + n) // 128 + 1) * 128 - n
        lengths.append(n)
        firsts.append(first)
    return lengths, firsts


def _kv_slots(positions: torch.Tensor, req: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    boundary = (req >= 0) & ((positions + 1) % 128 == 0)
    n = int(boundary.sum())
    pages = n // B + 2
    slots = torch.full(positions.shape, -1, dtype=torch.int64)
    slots[boundary] = torch.randperm(pages * B, generator=gen)[:n]
    if n:  # some non-boundary rows carry a real slot: it must keep the emit row's bytes
        collide = (~boundary) & (torch.rand(positions.shape, generator=gen) < 0.3)
        slots[collide] = slots[boundary][0]
    return slots, pages


def _rows(rows: int, head: int, pad: int, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """fp32 [rows, head] with a row stride of head + pad (pad a multiple of 4)."""
    full = scale * torch.randn(rows, head + pad, generator=gen)
    return full[:, :head]


def _run_state(rows: int, head: int, pad: int, gen: torch.Generator) -> torch.Tensor:
    m = 2.0 * torch.randn(rows, head, generator=gen)
    l = 1.0 + 40.0 * torch.rand(rows, head, generator=gen)  # noqa: E741
    a = torch.randn(rows, head, generator=gen) * l
    full = torch.zeros(rows, 3 * head + pad)
    full[:, : 3 * head] = torch.cat((m, l, a), dim=1)
    return full[:, : 3 * head]


def _to(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device` with its strides (a padded view moves as its whole storage)."""
    if t.is_contiguous():
        return t.to(device)
    base = t.as_strided((t.shape[0], t.stride(0)), (t.stride(0), 1)).to(device)
    return base[:, : t.shape[1]]
