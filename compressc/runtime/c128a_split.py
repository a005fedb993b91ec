"""C128A in one launch at small T: the c128a_split kernel (docs/kernels.md §13).

`ops.compress_c128a` runs it instead of the two-kernel pair when the host-known number of
launched rows T is at most `split_rows_limit()` (decided from shapes only: the same choice on
every replay of a captured graph). Its workspace holds a per-row arrival counter and the S
partials of each row (specs/abi.py `split_workspace_row`); it is zeroed once per device and
the kernel leaves every counter at 0 again (atom.inc wraps), so no launch resets it.
"""

from __future__ import annotations

import threading
from functools import cache

import torch

from compressc.specs.abi import split_workspace_row

# At or below this many launched rows compress_c128a takes the one-launch kernel. Measured on the
# H200 (benchmarks/NOTES.md, session 8 run 4): one launch is 0.50-0.87x the pair at decode T = 1..32
# and prefill T = 128..512 (1-4 active rows), but 1.37x at decode T = 128 and 1.47x at T = 512,
# where every row is active and the pair's tiled compress kernel streams the windows better. The
# host sees only T, so the limit serves decode batches (the common case) and leaves a prefill chunk
# of 128-512 tokens to the pair; COMPRESSC_C128A_SPLIT_ROWS moves it.
SPLIT_MAX_ROWS = 32
# the shape whose c128a_split variants ship (specs/matrix.py); other heads keep the pair
SPLIT_SHAPE = (512, 64)
# the cache formats whose c128a_split variants ship (specs/matrix.py); the others keep the pair
SPLIT_FORMATS = ("fp8_ds_mla",)
SPLIT_STEP_NAMES = ("token_to_req_indices", "positions", "slot_mapping", "block_table", "kv_slot_mapping",
                    "split_workspace", "num_rows", "num_positions", "num_kv_slots")

_WORKSPACE: dict[torch.device, list[torch.Tensor]] = {}  # every workspace handed out, newest last
_LOCK = threading.Lock()


@cache
def split_rows_limit() -> int:
    """The largest T that takes c128a_split (COMPRESSC_C128A_SPLIT_ROWS, read once; default
    SPLIT_MAX_ROWS)."""
    from compressc.config import Config

    rows = Config.from_env().c128a_split_rows
    return SPLIT_MAX_ROWS if rows is None else rows


def takes_split(T: int, cache_format: str, compressed_kv: object, bounds: bool,
                shape: tuple[int, int] = SPLIT_SHAPE) -> bool:
    """Whether a compress_c128a call of T rows runs the one-launch kernel: small T, a shipped
    format and (head_size, quant_block) shape, no caller-owned compressed_kv (the pair writes
    it; the split kernel has no such rows) and no checked build (COMPRESSC_CHECK_BOUNDS=kernel
    keeps the checked pair)."""
    return (0 < T <= split_rows_limit() and cache_format in SPLIT_FORMATS and compressed_kv is None
            and not bounds and shape == SPLIT_SHAPE)


def split_workspace(device: torch.device, rows: int, head_size: int, *, capturing: bool | None = None
                    ) -> torch.Tensor:
    """fp32 [rows, split_workspace_row(head)] zeroed workspace of `device`, grown when too small.

    Growing allocates and zeroes, which must not happen during CUDA graph capture: a
    RuntimeError then names reserve_c128a_split_workspace. Outgrown workspaces are kept (a
    captured graph may still use one); their counters are all 0 between launches.
    """
    width = split_workspace_row(head_size)
    need = rows * width
    buffers = _WORKSPACE.setdefault(device, [])
    if not buffers or buffers[-1].numel() < need:
        if capturing is None:
            capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if capturing:
            raise RuntimeError(
                f"compress_c128a needs a c128a_split workspace of {rows} rows during CUDA graph capture; "
                f"call compressc.runtime.reserve_c128a_scratch({rows}, {head_size}, device) before capture")
        with _LOCK:
            size = max(need, 2 * buffers[-1].numel() if buffers else 0)
            buffers.append(torch.zeros(size, dtype=torch.float32, device=device))
    return buffers[-1][:need].view(rows, width)


def workspace_pointer(device: torch.device, rows: int, head_size: int) -> int:
    """The device address of a workspace for `rows` rows (the eager path's per-call lookup)."""
    buffers = _WORKSPACE.get(device)
    if buffers and buffers[-1].numel() >= rows * split_workspace_row(head_size):
        return buffers[-1].data_ptr()
    return split_workspace(device, rows, head_size).data_ptr()
