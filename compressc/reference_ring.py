"""Torch reference of the C128 ring state (docs/kernels.md §10): slots, compress, tail save.

A transcription of the rules, on CPU and CUDA tensors alike, with the pooling arithmetic of
`compressc.reference` (the same online softmax and exact exp), so a ring launch whose window
rows equal a paged launch's gives the same bits. The ring is `state_cache` viewed as
[num_blocks, capacity, 2 * state_width] rows (request r's ring is block block_table[r, 0]).

The first position of request r's chunk is the position of its row query_start_loc[r];
positions in a chunk are consecutive, so for a row t of r at position p it is
p - (t - query_start_loc[r]), which is what is used here and in the kernel: window row q
is then launched row t' = t - (p - q), in the chunk iff t' >= query_start_loc[r].
"""

from __future__ import annotations

import torch

from compressc.specs import KernelSpec

WINDOW = 128  # a C128 window: its start and the ring capacity are multiples of it


def ring_capacity(num_speculative_tokens: int = 0) -> int:
    """Ring rows per request: 128 * ceil((128 + num_speculative_tokens) / 128)."""
    return WINDOW * -(-(WINDOW + num_speculative_tokens) // WINDOW)


def ring_slots(
    query_start_loc: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    block_table: torch.Tensor,
    capacity: int,
    num_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_mapping, tail_slot_mapping) int64 [num_rows]: slot = block_table[r, 0] * capacity
    + p mod capacity for a row of request r (-1 for padding, t >= query_start_loc[num_reqs],
    or a negative block); the tail map keeps it only for the last `capacity` rows of r's chunk."""
    t = torch.arange(num_rows, device=positions.device)
    used = int(query_start_loc[-1])
    req = token_to_req_indices[:num_rows].long().clamp(min=0)
    block = block_table[req, 0].long()
    p = positions[:num_rows].long()
    live = (t < used) & (block >= 0)
    slot = torch.where(live, block * capacity + torch.remainder(p, capacity), -1)
    end = query_start_loc.long()[req + 1]
    tail = torch.where(t + capacity >= end, slot, -1)
    return slot, tail


def c128a_compress_ring(
    spec: KernelSpec,
    state_cache: torch.Tensor,
    kv: torch.Tensor,
    score: torch.Tensor,
    ape: torch.Tensor,
    query_start_loc: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_table: torch.Tensor,
    capacity: int,
    compressed_kv: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
) -> None:
    """Pooled fp32 rows into compressed_kv[t] for the active rows t only (docs/kernels.md §10)."""
    # compressc.reference re-exports this module: import its pooling rules when called
    from compressc.reference import _active_index, _online_step, _require

    _require(spec, ("c128a_compress",))
    rows = _active_index(spec, slot_mapping, token_to_req_indices, positions, kv_slot_mapping)
    if rows.numel() == 0:
        return
    head, sw = spec.head, spec.state_width
    ring = state_cache.reshape(-1, capacity, 2 * sw)
    req = token_to_req_indices[rows].long()
    p = positions[rows].long()
    first = p - (rows - query_start_loc.long()[req])  # the position of row query_start_loc[r]
    block = block_table[req, 0].long()
    m = torch.full((rows.shape[0], head), float("-inf"), dtype=torch.float32, device=kv.device)
    den, acc = torch.zeros_like(m), torch.zeros_like(m)
    for i in range(spec.window):
        q = p - (spec.window - 1) + i
        in_chunk = (q >= first)[:, None]
        t_src = (query_start_loc.long()[req] + (q - first)).clamp(min=0)
        from_ring = ring[block, torch.remainder(q, capacity)]
        row_kv = torch.where(in_chunk, kv[t_src, :head].float(), from_ring[:, :head])
        row_sc = torch.where(in_chunk, score[t_src, :head].float() + ape[torch.remainder(q, WINDOW), :head],
                             from_ring[:, sw : sw + head])
        m, den, acc = _online_step(m, den, acc, row_kv, row_sc, torch.ones_like(in_chunk))
    compressed_kv[rows.to(compressed_kv.device)] = (acc / den).to(compressed_kv.device)


def ring_rows(
    kv: torch.Tensor, score: torch.Tensor, ape: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """fp32 [T, 2 * head] state rows [kv | score + ape[p mod 128]] of a launch's rows."""
    T = kv.shape[0]
    p = positions[:T].long().clamp(min=0)
    return torch.cat((kv.float(), score.float() + ape[torch.remainder(p, WINDOW)]), dim=1)


def save_ring_tail(
    state_cache: torch.Tensor,
    kv: torch.Tensor,
    score: torch.Tensor,
    ape: torch.Tensor,
    positions: torch.Tensor,
    tail_slot_mapping: torch.Tensor,
) -> None:
    """The partial-state save after compression: row t with tail slot s >= 0 becomes ring row s."""
    flat = state_cache.view(-1, state_cache.shape[-1])
    T = tail_slot_mapping.shape[0]
    keep = (tail_slot_mapping >= 0).nonzero().squeeze(1)
    flat[tail_slot_mapping[keep]] = ring_rows(kv[:T], score[:T], ape, positions)[keep]
