"""COMPRESSC_CHECK_BOUNDS=1 for the C128 ring (docs/kernels.md §10): the host checks of the ring
compress kernel's index values, as runtime/bounds.py checks the paged kernels'.

An active row t of request r at boundary position p reads window row q = p - 127 + i from the
launch's own rows (kv[t - (p - q)]) when q is in r's chunk, else from ring block
block_table[r, 0]; the store then uses the rope row and the kv page as the paged kernels do:

  token_to_req_indices[t]          < block_table.shape[0] and < query_start_loc.numel()
  query_start_loc[r]               in [0, t]       (the chunk's first launched row)
  block_table[r, 0]                in [0, blocks)  where the window reaches before the chunk
  positions[t] // 128 * 128        < cos_sin_cache.shape[0]
  kv_slot_mapping[t] // B          < k_cache.shape[0]
"""

from __future__ import annotations

import torch

from compressc.runtime.bounds import _Rows
from compressc.runtime.validate import as_int


class RingRows(_Rows):
    """The active rows of a ring call and the ring indices they use."""

    def checks(self) -> list[tuple[torch.Tensor, object]]:
        table, starts = self.args["block_table"], self.args["query_start_loc"]
        bad_req = self.active & ((self.req >= table.shape[0]) | (self.req >= starts.shape[0]))
        return [(bad_req, self._ring_request_message), *self._ring_checks(table, starts, bad_req),
                self._rope_check(), self._kv_check()]

    def _ring_request_message(self, row: int) -> str:
        rows, starts = self.args["block_table"].shape[0], self.args["query_start_loc"].shape[0]
        return (
            f"token_to_req_indices[{row}] = {int(self.req[row])} is out of range: block_table has {rows} "
            f"row(s), query_start_loc {starts} entries (COMPRESSC_CHECK_BOUNDS)"
        )

    def _ring_checks(self, table: torch.Tensor, starts: torch.Tensor, bad_req: torch.Tensor) -> list:
        ok = self.active & ~bad_req
        req = self.req.clamp(0, min(table.shape[0], starts.shape[0]) - 1)
        first = starts[req].long()
        t = torch.arange(self.T, device=self.pos.device)
        bad_start = ok & ((first < 0) | (first > t))
        blocks = self._ring_blocks()
        block = table[req, 0].long()
        # the window's first row p - 127 is before the chunk's first row: the ring is read
        reads_ring = ok & ~bad_start & (t - first < self.spec.window - 1)
        bad_block = reads_ring & ((block < 0) | (block >= blocks))

        def start_message(row: int) -> str:
            r = int(self.req[row])
            return (
                f"query_start_loc[{r}] = {int(first[row])} (used by row {row}) is not a launched row "
                f"in [0, {row}] (COMPRESSC_CHECK_BOUNDS)"
            )

        def block_message(row: int) -> str:
            r = int(self.req[row])
            return (
                f"block_table[{r}, 0] = {int(block[row])} (the ring of row {row}) is not a ring of "
                f"state_cache, which has {blocks} ring(s) of block_size rows (COMPRESSC_CHECK_BOUNDS)"
            )

        return [(bad_start, start_message), (bad_block, block_message)]

    def _ring_blocks(self) -> int:
        state, capacity = self.args["state_cache"], as_int("block_size", self.args["block_size"])
        return state.shape[0] * state.shape[1] // capacity
