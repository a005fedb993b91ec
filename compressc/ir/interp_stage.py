"""The smem-staged window in the interpreter: a CTA's dynamic shared memory and its cp.async groups.

`kd.stage_issue` copies the window of the block's next active row into a slot, thread by
thread, as the emitted copies address it (16 bytes a copy, at `slot * slot_bytes + tidx * 16
+ (r * 2 * copies + k) * 16 * threads`), and commits them as one group. A copy may land any
time until the `cp.async.wait_group` that covers it: the words are written at once (so a copy
into a slot still being read overwrites it, as the hardware may) and stay pending until
`kd.staged_wait` retires their group; the row's `kd.smem_rows` reading a pending word is an
error, and the slots start as NaN, so a wrong slot, a missing copy or a dropped wait is caught.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compressc.ir.core import Op
from compressc.ir.interp_stages import F32, Memory
from compressc.specs.target import WARP


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def _error(message: str) -> Exception:
    from compressc.ir.interp_row import LaneError

    return LaneError(message)


@dataclass
class StageSmem:
    """A CTA's dynamic smem (fp32 words, NaN until written) and its committed, unwaited groups."""

    words: np.ndarray
    pending: list[np.ndarray] = field(default_factory=list)

    @staticmethod
    def of(nbytes: int) -> StageSmem:
        return StageSmem(np.full(nbytes // 4, np.nan, F32))

    def commit(self, at: np.ndarray, values: np.ndarray, op: Op) -> None:
        if int(at.max()) >= len(self.words):
            raise _error(f"{op.name}: copies to fp32 word {int(at.max())}, past the {4 * len(self.words)} "
                         "bytes of dynamic smem")
        self.words[at] = values
        self.pending.append(np.unique(at))

    def wait(self, in_flight: int) -> None:
        """cp.async.wait_group N: every group but the newest N has landed."""
        self.pending = self.pending[len(self.pending) - in_flight:] if in_flight else []

    def read(self, at: np.ndarray, op: Op) -> np.ndarray:
        if any(np.isin(at, group).any() for group in self.pending):
            raise _error(f"{op.name}: reads smem words whose cp.async group was not waited for "
                         "(kd.staged_wait)")
        return self.words[at]


def issue(stage: StageSmem, mem: Memory, op: Op, row: int, slot: int) -> None:
    """Every thread's copies of row `row`'s window into slot `slot`, then one commit."""
    window, width, copies, threads = _a(op, "window"), _a(op, "width"), _a(op, "copies"), _a(op, "threads")
    tidx, absent = np.arange(threads), bool(op.attr("absent"))
    s0, req = int(mem["positions"][row]) - (window - 1), int(mem["token_to_req_indices"][row])
    lane, shift = tidx % WARP, mem.scalar("state_block_shift")
    wq = np.maximum(s0 + lane, 0) if absent else s0 + lane
    bt = mem["block_table"][req * mem.scalar("block_table_stride") + np.where(lane < window, wq >> shift, 0)]
    s_page = np.where(lane < window, bt, 0).astype(np.int64)
    dst, state, col = slot * _a(op, "slot_bytes") // 4 + tidx * 4, mem["state_cache"], tidx * 4 * copies
    ats, values = [], []
    for r in range(window):
        if r >= WARP:
            raise _error(f"{op.name}: shfl_idx from lane {r}, outside the 32-lane warp")
        q = max(s0 + r, 0) if absent else s0 + r
        stream = 0 if _a(op, "streams") == 1 else (r // _a(op, "ratio")) * _a(op, "head")
        page = s_page[(tidx // WARP) * WARP + r]
        src = page * mem.scalar("state_page_stride") + (q & ((1 << shift) - 1)) * 2 * width + stream + col
        for k, offset in enumerate([0] * copies + [width] * copies):
            h = k % copies
            ats.append(dst[:, None] + (r * 2 * copies + k) * 4 * threads + np.arange(4))
            values.append(state[(src + offset + 4 * h)[:, None] + np.arange(4)])
    stage.commit(np.concatenate(ats).reshape(-1), np.concatenate(values).reshape(-1), op)
