"""The host plan of the online C128 merge (docs/kernels.md §9.2): which segments a step launches.

For request r with state row rsi >= 0 and chunk rows [qs, qe) ending at seq_len, the first
position is f = seq_len - (qe - qs). The chunk is cut after every row whose position p has
(p + 1) mod ratio == 0. The first piece seeds from rsi (read_row = rsi) iff f mod ratio > 0;
later pieces start fresh. A piece that ends on a boundary is an *emit* segment (emit_token = its
last row, write_row = -1); the trailing partial piece is an *update* segment (emit_token = -1,
write_row = rsi). A chunk that ends exactly on a boundary adds rsi to the *reset* rows.

Pure Python: the plan is made on the host from the step's CPU metadata, then moved to the device
once (`OnlinePlan.tensors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Segment = tuple[int, int, int, int, int]  # (row_base, num_rows, read_row, emit_token, write_row)
RATIO = 128


@dataclass(frozen=True)
class OnlinePlan:
    """emit and update segments in request order, and the state rows to reset (§9.4 order)."""

    emit: tuple[Segment, ...] = ()
    update: tuple[Segment, ...] = ()
    reset: tuple[int, ...] = field(default=())

    def tensors(self, device=None):
        """(emit, update, reset) as int32 [n, 5], int32 [m, 5] and int64 [k] tensors on `device`."""
        import torch

        def table(rows: tuple[Segment, ...]):
            return torch.tensor(rows, dtype=torch.int32).reshape(len(rows), 5).to(device)

        return table(self.emit), table(self.update), torch.tensor(self.reset, dtype=torch.int64).to(device)


def plan_online_c128_segments(
    query_start_loc: Sequence[int],
    seq_lens: Sequence[int],
    state_rows: Sequence[int],
    ratio: int = RATIO,
) -> OnlinePlan:
    """The segments of one step: request r owns rows [query_start_loc[r], query_start_loc[r + 1])
    of the step, ends at `seq_lens[r]` tokens and keeps its running state in `state_rows[r]`
    (a negative row: the request has none, and is skipped)."""
    _check(query_start_loc, seq_lens, state_rows, ratio)
    emit: list[Segment] = []
    update: list[Segment] = []
    reset: list[int] = []
    for r, rsi in enumerate(state_rows):
        qs, qe = int(query_start_loc[r]), int(query_start_loc[r + 1])
        if rsi < 0 or qe == qs:
            continue
        pieces = _pieces(qs, qe, int(seq_lens[r]), int(rsi), ratio)
        emit += [p for p in pieces if p[3] >= 0]
        update += [p for p in pieces if p[3] < 0]
        if int(seq_lens[r]) % ratio == 0:
            reset.append(int(rsi))
    return OnlinePlan(tuple(emit), tuple(update), tuple(reset))


def _pieces(qs: int, qe: int, seq_len: int, rsi: int, ratio: int) -> list[Segment]:
    """The chunk's pieces, cut after every boundary position."""
    first = seq_len - (qe - qs)
    read = rsi if first % ratio else -1
    pieces, start = [], qs
    while start < qe:
        position = first + (start - qs)
        end = min(qe, start + ratio - position % ratio)  # one past the piece's last row
        boundary = (first + (end - 1 - qs) + 1) % ratio == 0
        pieces.append((start, end - start, read, end - 1 if boundary else -1, -1 if boundary else rsi))
        start, read = end, -1
    return pieces


def _check(query_start_loc: Sequence[int], seq_lens: Sequence[int], state_rows: Sequence[int],
           ratio: int) -> None:
    if len(query_start_loc) != len(seq_lens) + 1 or len(state_rows) != len(seq_lens):
        raise ValueError(
            f"query_start_loc must have num_reqs + 1 entries and state_rows num_reqs: got "
            f"{len(query_start_loc)}, {len(state_rows)} for {len(seq_lens)} seq_lens")
    if ratio <= 0 or ratio & (ratio - 1):
        raise ValueError(f"ratio must be a power of two, got {ratio}")
    for r, seq_len in enumerate(seq_lens):
        rows = int(query_start_loc[r + 1]) - int(query_start_loc[r])
        if rows < 0 or rows > int(seq_len):
            raise ValueError(
                f"request {r}: query_start_loc must be non-decreasing and a chunk no longer than its "
                f"seq_len: {rows} rows for seq_len {seq_len}")
