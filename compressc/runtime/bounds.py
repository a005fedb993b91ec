"""Opt-in bounds checks of index values (COMPRESSC_CHECK_BOUNDS=1), before any kernel writes.

The host checks in validate.py read only metadata. The kernels trust the index tensors'
values: a block_table entry past state_cache, a position past cos_sin_cache or a kv
slot past k_cache reads or writes out of bounds. With COMPRESSC_CHECK_BOUNDS=1 each call
first checks, with torch ops on the tensors' device, every index the active rows use
(docs/kernels.md §3: rows with a slot, a request, a boundary position and a kv slot), the rule
the reference implements (compressc.reference.active_rows, pool, store_bytes):

  token_to_req_indices[t]       < block_table.shape[0]
  (positions[t] - w) // bs      < block_table.shape[1]   for the window rows w >= 0
  block_table[req, column]      in [0, state_cache.shape[0])
  positions[t] // ratio * ratio < cos_sin_cache.shape[0]
  kv_slot_mapping[t] // B       < k_cache.shape[0]

All flags come back in one device-to-host copy (one sync per call, so not inside CUDA
graph capture); only a failing call pays for finding the first bad row. The error
names the tensor, the row and the value.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from compressc.runtime.validate import as_int
from compressc.specs.family import KernelSpec


class IndexOutOfBoundsError(ValueError):
    """An index tensor holds a value the kernels would use to read or write out of bounds."""


def check_bounds(spec: KernelSpec, args: Mapping[str, object], num_rows: int) -> None:
    """IndexOutOfBoundsError naming the first out-of-range index of the active rows."""
    if num_rows == 0:
        return
    if spec.state_layout == "ring":
        from compressc.runtime.bounds_ring import RingRows

        checks = RingRows(spec, args, num_rows).checks()
    else:
        checks = _Rows(spec, args, num_rows).checks()
    flags = torch.stack([bad.any() for bad, _ in checks]).tolist()  # the one sync
    for (bad, describe), failed in zip(checks, flags, strict=True):
        if failed:
            row = int(bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[0, 0])
            raise IndexOutOfBoundsError(describe(row))


class _Rows:
    """The active rows of one call and the index values they use, as int64 [T] tensors."""

    def __init__(self, spec: KernelSpec, args: Mapping[str, object], T: int) -> None:
        self.spec, self.args, self.T = spec, args, T
        self.pos, self.req = self._padded("positions"), self._padded("token_to_req_indices")
        self.kv = self._padded("kv_slot_mapping")
        boundary = (self.pos >= 0) & (torch.remainder(self.pos + 1, spec.ratio) == 0)
        self.active = (self._padded("slot_mapping") >= 0) & (self.req >= 0) & boundary & (self.kv >= 0)

    def _padded(self, name: str) -> torch.Tensor:
        """args[name][:T] as int64, -1 where the tensor is shorter (an inactive row)."""
        values = self.args[name]
        out = torch.full((self.T,), -1, dtype=torch.int64, device=values.device)
        n = min(self.T, values.shape[0])
        out[:n] = values[:n].long()
        return out

    def checks(self) -> list[tuple[torch.Tensor, object]]:
        table = self.args["block_table"]
        bad_req = self.active & (self.req >= table.shape[0])
        return [(bad_req, self._request_message), *self._window_checks(table, bad_req),
                self._rope_check(), self._kv_check()]

    def _request_message(self, row: int) -> str:
        rows = self.args["block_table"].shape[0]
        return (
            f"token_to_req_indices[{row}] = {int(self.req[row])} is out of range: block_table has {rows} "
            f"row(s) (COMPRESSC_CHECK_BOUNDS)"
        )

    def _window_checks(self, table: torch.Tensor, bad_req: torch.Tensor) -> list:
        window, bs = self.spec.window, as_int("block_size", self.args["block_size"])
        q = self.pos[:, None] - (window - 1) + torch.arange(window, device=self.pos.device)
        used = (self.active & ~bad_req)[:, None] & (q >= 0)
        col = q.clamp(min=0) // bs
        bad_col = used & (col >= table.shape[1])
        safe_req = self.req.clamp(0, table.shape[0] - 1)[:, None]
        pages = table[safe_req, col.clamp(max=table.shape[1] - 1)].long()
        state_pages = self.args["state_cache"].shape[0]
        bad_page = used & ~bad_col & ((pages < 0) | (pages >= state_pages))

        def column_message(row: int) -> str:
            c = int(col[row][bad_col[row]][0])
            return (
                f"positions[{row}] = {int(self.pos[row])} needs block_table column {c} "
                f"(block_size {bs}), block_table has {table.shape[1]} column(s) (COMPRESSC_CHECK_BOUNDS)"
            )

        def page_message(row: int) -> str:
            c = int(col[row][bad_page[row]][0])
            value = int(table[int(self.req[row]), c])
            return (
                f"block_table[{int(self.req[row])}, {c}] = {value} (used by row {row}) is not a page of "
                f"state_cache, which has {state_pages} page(s) (COMPRESSC_CHECK_BOUNDS)"
            )

        return [(bad_col, column_message), (bad_page, page_message)]

    def _rope_check(self) -> tuple[torch.Tensor, object]:
        rows = self.args["cos_sin_cache"].shape[0]
        need = torch.div(self.pos, self.spec.ratio, rounding_mode="floor") * self.spec.ratio
        bad = self.active & (need >= rows)

        def message(row: int) -> str:
            return (
                f"positions[{row}] = {int(self.pos[row])} needs cos_sin_cache row {int(need[row])}, "
                f"cos_sin_cache has {rows} row(s) (COMPRESSC_CHECK_BOUNDS)"
            )

        return bad, message

    def _kv_check(self) -> tuple[torch.Tensor, object]:
        B = as_int("kv_cache_block_size", self.args["kv_cache_block_size"])
        pages = self.args["k_cache"].shape[0]
        bad = self.active & (torch.div(self.kv, B, rounding_mode="floor") >= pages)

        def message(row: int) -> str:
            slot = int(self.kv[row])
            return (
                f"kv_slot_mapping[{row}] = {slot} is past k_cache: page {slot // B} "
                f"(kv_cache_block_size {B}), k_cache has {pages} page(s) (COMPRESSC_CHECK_BOUNDS)"
            )

        return bad, message
