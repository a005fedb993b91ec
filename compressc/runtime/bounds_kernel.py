"""COMPRESSC_CHECK_BOUNDS=kernel: the checked builds' error record (docs/kernels.md §3, "Checked builds").

A checked build (`KernelSpec.bounds`, variant suffix `_bounds`, its own cache key and index
entry, never served to a plain request) checks on the GPU every index an active row uses, with
the host mode's rules (`compressc.runtime.bounds`), against extents passed as kernel scalars.
A bad row is skipped, so nothing is read or written out of range, and the first violation is
written into one 64-byte record per device (8 int64: claimed | code << 32, row, value, at,
limit, aux). The launch itself makes no host synchronisation, so it is CUDA-graph safe: the
record's address is fixed per device (allocated by the first call, which must come before
capture, as loading the kernel must) and a replay records into it too.

When it is read: after every eager call (one 64-byte device-to-host read: a sync on the
current stream), which raises IndexOutOfBoundsError naming the tensor, the row and the value
and clears the record; never during capture. After graph replays call `check_kernel_bounds()`
(the next eager call also raises what a replay recorded). Ops without a checked build (csa, the
online merge, the ring: runtime/bounds_ring.py) keep the host checks in this mode.
"""

from __future__ import annotations

import torch

from compressc.runtime.bounds import IndexOutOfBoundsError
from compressc.specs.abi import BOUNDS_CODES, BOUNDS_WORDS

_RECORDS: dict[torch.device, torch.Tensor] = {}
_CHECK = {code: name for name, code in BOUNDS_CODES.items()}
_SUFFIX = " (COMPRESSC_CHECK_BOUNDS=kernel)"


def record_for(device: torch.device) -> torch.Tensor:
    """The device's error record, allocated (zeroed) on first use, never during capture."""
    rec = _RECORDS.get(device)
    if rec is not None:
        return rec
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("COMPRESSC_CHECK_BOUNDS=kernel: run the op once before CUDA graph capture "
                           "(it allocates the device's bounds error record)")
    rec = torch.zeros(BOUNDS_WORDS, dtype=torch.int64, device=device)
    _RECORDS[device] = rec
    return rec


def kernel_values(args: dict, device: torch.device) -> dict[str, int]:
    """The checked builds' extra parameters of one call: the record and the extents."""
    return {"bounds_error": record_for(device).data_ptr(), **extents(args)}


def extents(args: dict) -> dict[str, int]:
    """What the rows of one call may index: block_table rows and columns, state pages, cos/sin
    rows, k_cache pages (a kernel takes those of the tensors it reads)."""
    table = args["block_table"]

    def rows(name: str) -> int:  # c128a_store's scenarios have no state_cache
        return int(args[name].shape[0]) if args.get(name) is not None else 0

    return {
        "bounds_table_rows": int(table.shape[0]),
        "bounds_table_cols": int(table.shape[1]) if table.dim() > 1 else 0,
        "bounds_state_pages": rows("state_cache"),
        "bounds_cos_sin_rows": rows("cos_sin_cache"),
        "bounds_kv_pages": rows("k_cache"),
    }


def describe(words: list[int]) -> str | None:
    """The message of a record's 8 words, None when nothing is recorded."""
    if not words[0] & 0xFFFFFFFF:
        return None
    code, (row, value, at, limit, aux) = words[0] >> 32, words[1:6]
    check = _CHECK.get(code)
    if check == "request":
        text = f"token_to_req_indices[{row}] = {value} is out of range: block_table has {limit} row(s)"
    elif check == "column":
        text = f"positions[{row}] = {value} needs block_table column {at}, block_table has {limit} column(s)"
    elif check == "page":
        text = (f"block_table[{aux}, {at}] = {value} (used by row {row}) is not a page of state_cache, "
                f"which has {limit} page(s)")
    elif check == "rope":
        text = f"positions[{row}] = {value} needs cos_sin_cache row {at}, cos_sin_cache has {limit} row(s)"
    elif check == "kv":
        text = f"kv_slot_mapping[{row}] = {value} is past k_cache: page {at}, k_cache has {limit} page(s)"
    else:
        text = f"an unknown bounds check {code} failed at row {row} (value {value})"
    return text + "; the kernel skipped the row" + _SUFFIX


def take_error(device: torch.device) -> str | None:
    """The recorded violation's message (clearing the record), None if there is none; reads the
    record once (a sync on the current stream)."""
    rec = _RECORDS.get(device)
    if rec is None:
        return None
    message = describe(rec.tolist())
    if message is not None:
        rec.zero_()
    return message


def check_kernel_bounds(device: torch.device | str | None = None) -> None:
    """Raise IndexOutOfBoundsError if a checked kernel on `device` (default: every device used)
    recorded a violation since the last check; clears the record."""
    devices = list(_RECORDS) if device is None else [torch.device(device)]
    for dev in devices:
        message = take_error(dev)
        if message is not None:
            raise IndexOutOfBoundsError(message)


def after_launch(device: torch.device) -> None:
    """The eager check after a checked call (skipped during CUDA graph capture)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    check_kernel_bounds(device)
