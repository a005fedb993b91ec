"""Eager launches in a few microseconds: check once per argument signature, then reuse.

The full checks of `validate` read ~60 tensor attributes and format nothing, yet cost
tens of microseconds per call; a cuda-bindings launch costs more. Here each op call
builds a *signature* and looks it up:

- the per-layer tensors (state_cache, rms_norm_weight, cos_sin_cache, k_cache, and an
  explicit compressed_kv) by identity and data pointer: an object's shape, strides,
  dtype and device do not change while it lives, and a weak reference evicts the
  entry when it dies, so an id is never mistaken for a later object's;
- the per-step index tensors (new slices every step) by dtype, device index and strides,
  plus `token_to_req_indices.numel() >= T` (and the scratch rows for C128A);
- the scalars (block sizes, eps) and the variant (head size, quant block) by value.

A miss runs every check of the checked path (`ops`), resolves and loads the kernels,
and prepares one argument buffer: the per-step values (5-6 pointers, 3 counts) in one
struct at its start, every other kernel parameter packed once behind them, and one
`void*[N]` array per kernel pointing into it. A hit packs the per-step values with one
`struct.pack_into` and makes one driver call per kernel (`cudalaunch`). A signature is
cached only when its checks hold for every shape that has it (an index tensor of one
element may have any stride; such a call is checked in full every time).

What identity does not see: in-place metadata edits of a live per-layer tensor that
keep its data pointer (`as_strided_`, a shrinking `resize_`). `COMPRESSC_DEBUG_CHECKS=1`
runs the full checks and the cuda-bindings launch on every call.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import weakref
from collections.abc import Callable, Sequence

import torch

from compressc.runtime.args import pack_args
from compressc.runtime.cudalaunch import FastKernel, driver_library
from compressc.specs.abi import Param

# Per-step values, in this order, at the start of every prepared buffer.
STEP_NAMES = ("token_to_req_indices", "positions", "slot_mapping", "block_table", "kv_slot_mapping",
              "compressed_kv", "num_rows", "num_positions", "num_kv_slots")
STEP = struct.Struct("<6Q" + "i4x" * 3)  # 8-byte slots; an i32 count sits in the low half of one
_FIXED = {"ptr": "Q", "i64": "q", "i32": "i4x", "f32": "f4x"}
MAX_ENTRIES = 4096  # signatures kept per op; more are dropped all at once (a server keeps few)
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_get_ident = threading.get_ident


class Prepared:
    """One signature's argument buffer and launches; `run(...)` packs step values and launches."""

    __slots__ = ("buffer", "launches", "index", "device", "refs")

    def __init__(self, kernels: Sequence[tuple[object, Sequence[Param], bool]], values: dict,
                 device_index: int, device: torch.device | None = None) -> None:
        params = [p for _, plist, _ in kernels for p in plist if p.name not in STEP_NAMES]
        fixed = list({p.name: p for p in params}.values())
        self.buffer = ctypes.create_string_buffer(STEP.size + 8 * max(len(fixed), 1))
        base = ctypes.addressof(self.buffer)
        offset = {name: 8 * i for i, name in enumerate(STEP_NAMES)}
        offset |= {p.name: STEP.size + 8 * i for i, p in enumerate(fixed)}
        _pack_fixed(self.buffer, fixed, values)
        self.index, self.device = device_index, device
        self.refs: list = []
        self.launches = tuple(
            _launch_of(kernel, plist, base, offset, overlap) for kernel, plist, overlap in kernels
        )

    def run(self, step: tuple, num_rows: int) -> None:
        """Pack the per-step values and launch every kernel on torch's current stream."""
        STEP.pack_into(self.buffer, 0, *step)
        stream = _raw_stream(self.index) if _raw_stream is not None else 0
        for launch in self.launches:
            launch(num_rows, stream)


def _pack_fixed(buffer: ctypes.Array, fixed: Sequence[Param], values: dict) -> None:
    layout = struct.Struct("<" + "".join(_FIXED[p.kind] for p in fixed))
    try:
        layout.pack_into(buffer, STEP.size, *[values[p.name] for p in fixed])
    except (KeyError, struct.error, TypeError, OverflowError):
        pack_args(fixed, values)  # raises the error naming the parameter
        raise


def _launch_of(kernel, params: Sequence[Param], base: int, offset: dict, overlap: bool) -> Callable:
    array = (ctypes.c_void_p * len(params))(*(base + offset[p.name] for p in params))
    lib = driver_library() if hasattr(kernel, "function") else None
    if lib is None:
        # no libcuda through ctypes (or a stand-in kernel): the loader's own launch
        def launch_rows(num_rows: int, stream: int) -> None:
            kernel.launch_rows(num_rows, array, overlap_previous=overlap)

        launch_rows.array = array
        return launch_rows
    fast = FastKernel(kernel, lib, overlap)
    address, launcher, grid = ctypes.addressof(array), fast.launcher, fast.grid

    def launch(num_rows: int, stream: int) -> None:
        ctas = grid(num_rows)
        if ctas and launcher(ctas, address, stream):
            _retry_or_raise(kernel, launcher, ctas, address, stream)

    launch.array = array  # the driver reads the array during the call: keep it alive
    return launch


def _retry_or_raise(kernel, launcher: Callable, ctas: int, address: int, stream: int) -> None:
    """A failed launch: make the device's primary context current (a new thread, or one that
    torch switched to another device) and launch again; raise CudaError if it still fails."""
    from compressc.runtime import loader

    loader.ensure_context(kernel.device_index)
    result = launcher(ctas, address, stream)
    if result:
        raise loader.launch_error(kernel.entry, result)


class SignatureCache:
    """Prepared launches by signature, one table per op; entries die with their tensors."""

    def __init__(self) -> None:
        self.entries: dict[tuple, Prepared] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple, prepared: Prepared, owners: Sequence[torch.Tensor]) -> None:
        """Keep `prepared` under `key` for as long as every tensor of `owners` lives."""
        entries = self.entries

        def evict(_ref: weakref.ref, key: tuple = key) -> None:
            entries.pop(key, None)

        prepared.refs = [weakref.ref(t, evict) for t in owners]
        with self._lock:
            if len(entries) >= MAX_ENTRIES:
                entries.clear()
            entries[key] = prepared

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()


def step_signature(t: torch.Tensor) -> tuple:
    """dtype, device index and strides of a per-step tensor (the parts a check depends on)."""
    return t.dtype, t.get_device(), t.stride()


def cacheable_index(t: torch.Tensor) -> bool:
    """Whether a per-step tensor passes its layout checks whatever its length: contiguous
    1-D index vectors and page tables with contiguous rows."""
    strides = t.stride()
    return strides == (1,) or (len(strides) == 2 and strides[1] == 1)


def ident() -> int:
    """The calling thread: each thread packs into buffers of its own."""
    return _get_ident()
