"""Realistic launches of the C128 ring state (docs/kernels.md §10), deterministic by seed.

`make_ring_scenario(chunks)` builds one step of several requests, each a chunk (start,
length) of a sequence whose earlier rows the ring holds: ring row q mod capacity of the
request's block is [kv_q | score_q + ape[q mod 128]] for the `capacity` positions before
the chunk, random elsewhere. It also builds the *paged* state of the same history (every
position, pages of 8), so a ring launch can be checked against the paged path. Padding rows
(slot -1 yet a request, a boundary position and a real kv slot), a boundary row with kv slot
-1, non-boundary rows whose kv slot collides with a real one and requests whose ring block is
-1 (slot -1 on every row) cover docs/kernels.md §6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressc import reference
from compressc.scenarios import SENTINEL, cos_sin_cache, page_bytes
from compressc.specs import KernelSpec, make_spec

PAGED_BS, KV_B = 8, 2


@dataclass
class RingScenario:
    """One ring launch; `paged_state`/`paged_block_table` hold the same history paged."""

    spec: KernelSpec
    store_spec: KernelSpec
    kind: str
    capacity: int
    state_cache: torch.Tensor
    kv: torch.Tensor
    score: torch.Tensor
    ape: torch.Tensor
    query_start_loc: torch.Tensor
    token_to_req_indices: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    tail_slot_mapping: torch.Tensor
    block_table: torch.Tensor
    kv_slot_mapping: torch.Tensor
    paged_state: torch.Tensor | None
    paged_block_table: torch.Tensor | None
    rms_norm_weight: torch.Tensor
    rms_norm_eps: float
    cos_sin_cache: torch.Tensor
    k_cache: torch.Tensor
    kv_cache_block_size: int

    @property
    def T(self) -> int:
        return self.slot_mapping.shape[0]

    def poisoned_compressed_kv(self, sentinel: int = SENTINEL) -> torch.Tensor:
        raw = torch.full((self.T, self.spec.head * 4), sentinel, dtype=torch.uint8, device=self.kv.device)
        return raw.view(torch.float32)

    def run_reference(self, sentinel: int = SENTINEL) -> torch.Tensor:
        """The reference rows over a sentinel-poisoned compressed_kv (Scenario's interface)."""
        return self.reference_compress(self.poisoned_compressed_kv(sentinel))

    def active(self) -> torch.Tensor:
        return reference.active_rows(self.spec, self.T, self.token_to_req_indices, self.positions,
                                     self.slot_mapping, self.kv_slot_mapping)

    def reference_compress(self, out: torch.Tensor) -> torch.Tensor:
        reference.c128a_compress_ring(
            self.spec, self.state_cache, self.kv, self.score, self.ape, self.query_start_loc,
            self.token_to_req_indices, self.positions, self.slot_mapping, self.block_table, self.capacity,
            out, self.kv_slot_mapping)
        return out

    def paged_compress(self, out: torch.Tensor) -> torch.Tensor:
        """The paged kernel's reference on the same history (what the ring must reproduce)."""
        if self.paged_state is None:
            raise ValueError("this scenario has no paged copy: make_ring_scenario(..., paged=True)")
        paged = make_spec("c128a_compress", self.spec.head, self.spec.quant_block, weight_dtype="f32")
        reference.c128a_compress(paged, self.paged_state, self.token_to_req_indices, self.positions,
                                 self.slot_mapping, self.paged_block_table, PAGED_BS, out,
                                 self.kv_slot_mapping)
        return out

    def op_args(self, k_cache: torch.Tensor) -> tuple:
        """compress_c128a_ring's positional arguments (its keywords: `op_keywords`)."""
        return (self.state_cache, self.token_to_req_indices, self.positions, self.slot_mapping,
                self.block_table, self.capacity, self.rms_norm_weight, self.rms_norm_eps,
                self.cos_sin_cache, k_cache, self.kv_slot_mapping, self.kv_cache_block_size)

    def op_keywords(self) -> dict:
        return {"kv": self.kv, "score": self.score, "ape": self.ape, "query_start_loc": self.query_start_loc}

    def reference_store(self, compressed_kv: torch.Tensor, k_cache: torch.Tensor) -> torch.Tensor:
        reference.c128a_store(self.store_spec, compressed_kv, self.token_to_req_indices, self.positions,
                              self.slot_mapping, self.rms_norm_weight, self.rms_norm_eps, self.cos_sin_cache,
                              k_cache, self.kv_slot_mapping, self.kv_cache_block_size)
        return k_cache


def make_ring_scenario(
    chunks: list[tuple[int, int]],
    *,
    capacity: int = 256,
    padding: int = 2,
    dead: tuple[int, ...] = (),
    seed: int = 0,
    device: str | torch.device = "cpu",
    strided: bool = False,
    weight_dtype: str = "bf16",
    kind: str = "mixed",
    paged: bool | None = None,
) -> RingScenario:
    """One step: request r's chunk is positions chunks[r] = (start, length); `dead` requests
    have ring block -1; `strided` gives kv and score as column views of one [T, 1040] tensor;
    `paged` builds the paged copy of the history (None: when it holds at most 64K rows)."""
    gen = torch.Generator().manual_seed(seed)
    spec = make_spec("c128a_compress", weight_dtype="f32", state_layout="ring")
    store = make_spec("c128a_store", weight_dtype=weight_dtype)
    head = spec.head
    ape = torch.randn(128, head, generator=gen)
    spread = torch.exp(0.5 * torch.randn(head, generator=gen))  # per-channel kv magnitudes
    # rows of positions lo .. s + n - 1 (lo = s - 127): all a launch can read
    history = [(torch.randn(s + n - _lo(s, capacity), head, generator=gen) * spread,
                2.0 * torch.randn(s + n - _lo(s, capacity), head, generator=gen)) for s, n in chunks]
    rows = _rows(chunks, padding, capacity, dead, gen)
    kv, score = _launch_rows(history, chunks, padding, gen, strided)
    ring = _ring(history, chunks, rows["block_table"], capacity, ape, gen)
    if paged is None:
        paged = sum(len(h[0]) for h in history) <= 1 << 16
    paged_state, paged_bt = _paged(history, chunks, capacity, ape, gen) if paged else (None, None)
    k_cache = torch.zeros((rows["num_kv_pages"], KV_B, page_bytes(store, KV_B) // KV_B), dtype=torch.uint8)
    weight = 1.0 + 0.3 * torch.randn(head, generator=gen)
    values = dict(
        state_cache=ring, kv=kv, score=score, ape=ape,
        rms_norm_weight=weight.to(torch.bfloat16 if weight_dtype == "bf16" else torch.float32),
        cos_sin_cache=cos_sin_cache(store.rope, int(rows["positions"].max()) + 1), k_cache=k_cache,
        **{k: rows[k] for k in ("query_start_loc", "token_to_req_indices", "positions", "slot_mapping",
                                "tail_slot_mapping", "block_table", "kv_slot_mapping")},
    )
    moved = {k: v.to(device) for k, v in values.items()}
    pages = {"paged_state": paged_state, "paged_block_table": paged_bt}
    return RingScenario(spec=spec, store_spec=store, kind=kind, capacity=capacity, rms_norm_eps=1e-6,
                        kv_cache_block_size=KV_B, **moved,
                        **{k: None if v is None else v.to(device) for k, v in pages.items()})


def ring_scenario(spec: KernelSpec, kind: str, T: int, *, device: str | torch.device = "cpu",
                  seed: int = 0, capacity: int = 256, paged: bool | None = None) -> RingScenario:
    """`compressc.scenarios.make_scenario`'s kinds for a ring kernel, T rows in all:
    prefill (one sequence from 0), chunked (one sequence resuming mid-window: a chunk of
    T > capacity rows is longer than the ring), decode (T requests of one boundary token),
    mixed (up to 4 requests mid-sequence, one with ring block -1, 1/8 padding rows); every
    chunk of chunked and mixed holds a boundary row."""
    gen = torch.Generator().manual_seed(seed + 1)
    if kind == "prefill":
        chunks, pad, dead = [(0, T)], 0, ()
    elif kind == "chunked":  # a chunk with a boundary row, starting mid-window (T > 1)
        chunks, pad, dead = [(_with_boundary(T, gen, 6), T)], 0, ()
    elif kind == "decode":
        chunks, pad, dead = [(128 * _randint(gen, 1, 16) + 127, 1) for _ in range(T)], 0, ()
    else:
        pad = max(1, T // 8) if T >= 2 else 0
        n = max(1, min(4, (T - pad) // 2))
        cuts = sorted(torch.randperm(T - pad - 1, generator=gen)[: n - 1].add(1).tolist())
        lengths = [b - a for a, b in zip([0, *cuts], [*cuts, T - pad], strict=True)]
        chunks = [(_with_boundary(m, gen, 8), m) for m in lengths]
        dead = (n - 1,) if n > 2 else ()
    return make_ring_scenario(chunks, capacity=capacity, padding=pad, dead=dead, seed=seed, device=device,
                              weight_dtype=spec.weight_dtype if spec.normalises else "bf16", kind=kind,
                              paged=paged)


def _with_boundary(length: int, gen: torch.Generator, kmax: int) -> int:
    """A start whose chunk of `length` rows holds a boundary position 128k + 127."""
    return 128 * _randint(gen, 1, kmax) + 127 - _randint(gen, 0, min(length, 128))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (1,), generator=gen))


def _rows(chunks, padding: int, capacity: int, dead, gen) -> dict:
    lengths = [n for _, n in chunks]
    qsl = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    req = torch.cat([torch.full((n,), r) for r, n in enumerate(lengths)])
    pos = torch.cat([torch.arange(s, s + n) for s, n in chunks])
    blocks = torch.randperm(len(chunks) + 2, generator=gen)[: len(chunks)].int()
    blocks[list(dead)] = -1
    table = blocks[:, None].contiguous()
    kv_pages = torch.randperm(sum((s + n) // 128 // KV_B + 1 for s, n in chunks) + 2, generator=gen)
    first_page = torch.tensor([0, *[(s + n) // 128 // KV_B + 1 for s, n in chunks]]).cumsum(0)
    c = pos // 128
    kv_slot = kv_pages[first_page[req] + c // KV_B] * KV_B + c % KV_B
    boundary = (pos + 1) % 128 == 0
    live = boundary & (blocks[req] >= 0)
    if int(live.sum()) >= 2:
        kv_slot[live.nonzero()[0, 0]] = -1  # a boundary row that does not store
    storing = (boundary & (kv_slot >= 0)).nonzero().squeeze(1)
    t = int(storing[-1]) if storing.numel() else 0
    req = torch.cat((req, torch.full((padding,), int(req[t]))))
    pos = torch.cat((pos, torch.full((padding,), int(pos[t]))))
    kv_slot = torch.cat((kv_slot, torch.full((padding,), int(kv_slot[t]))))
    T = req.numel()
    slot, tail = reference.ring_slots(qsl, req.int(), pos, table, capacity, T)
    return {"query_start_loc": qsl, "token_to_req_indices": req.int(), "positions": pos, "slot_mapping": slot,
            "tail_slot_mapping": tail, "block_table": table, "kv_slot_mapping": kv_slot,
            "num_kv_pages": kv_pages.numel()}


def _lo(start: int, capacity: int) -> int:
    """The first position a launch can read: a window reaches 127 rows before its chunk."""
    return max(0, start - min(capacity, 127))


def _launch_rows(history, chunks, padding: int, gen, strided: bool) -> tuple[torch.Tensor, torch.Tensor]:
    kv = torch.cat([h[0][-n:] for h, (_, n) in zip(history, chunks, strict=True)])
    score = torch.cat([h[1][-n:] for h, (_, n) in zip(history, chunks, strict=True)])
    head = kv.shape[1]
    kv = torch.cat((kv, torch.randn(padding, head, generator=gen)))
    score = torch.cat((score, torch.randn(padding, head, generator=gen)))
    if not strided:
        return kv, score
    both = torch.randn(kv.shape[0], 2 * head + 16, generator=gen)
    both[:, :head], both[:, head : 2 * head] = kv, score
    return both[:, :head], both[:, head : 2 * head]


def _ring(history, chunks, table, capacity: int, ape, gen) -> torch.Tensor:
    """The ring blocks: the `capacity` rows before each chunk, random everywhere else."""
    shape = (len(chunks) + 2, capacity, 2 * ape.shape[1])
    # rows nothing saved: random, or (a large launch) a constant that no history row has
    small = shape[0] * capacity <= 1 << 15
    ring = 3.0 * torch.randn(shape, generator=gen) if small else torch.full(shape, 7.0)
    for r, (s, _) in enumerate(chunks):
        block = int(table[r, 0])
        if block < 0:
            continue
        q = torch.arange(_lo(s, capacity), s)
        k = q - _lo(s, capacity)
        ring[block, q % capacity] = torch.cat((history[r][0][k], history[r][1][k] + ape[q % 128]), dim=1)
    return ring


def _paged(history, chunks, capacity: int, ape, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """The history's state rows [kv | score + ape] in scattered pages of 8 (earlier logical
    pages, never read, point at page 0)."""
    head = ape.shape[1]
    spans = [range(_lo(s, capacity) // PAGED_BS, (s + n - 1) // PAGED_BS + 1) for s, n in chunks]
    total = sum(len(p) for p in spans) + 1
    perm = torch.randperm(total, generator=gen)
    state = torch.zeros(total, PAGED_BS, 2 * head)
    table = torch.zeros(len(chunks), max(p.stop for p in spans), dtype=torch.int32)
    used = 0
    for r, (s, n) in enumerate(chunks):
        table[r, spans[r].start : spans[r].stop] = perm[used : used + len(spans[r])].int()
        used += len(spans[r])
        q = torch.arange(_lo(s, capacity), s + n)
        k = q - _lo(s, capacity)
        state[table[r, q // PAGED_BS].long(), q % PAGED_BS] = torch.cat(
            (history[r][0][k], history[r][1][k] + ape[q % 128]), dim=1)
    return state, table
