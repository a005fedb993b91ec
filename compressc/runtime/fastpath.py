"""Eager launches in a few microseconds: check once per argument signature, then reuse.

The full checks of `validate` read ~60 tensor attributes per call, and a cuda-bindings
launch costs more than all of them. Here a call is looked up by its *signature*:

- key: the variant (head size, quant block), the scalars (block sizes, eps), the data
  pointers of the per-layer tensors (state_cache, rms_norm_weight, cos_sin_cache, k_cache,
  an explicit compressed_kv) and the calling thread (each packs its own buffer);
- guard: dtype, device, shape and strides of every tensor argument, with the length of
  the per-step index tensors left free (a new slice every step). `torch`'s own C++ tensor
  guard checks them in one call where it exists (the one torch.compile's guards use);
  a tuple of the same attributes compared in Python otherwise;
- per call: `token_to_req_indices.numel() >= T` (and `compressed_kv.shape[0] >= T`),
  the only checks that depend on a length.

A miss (or a failed guard) runs every check of the checked path (`ops`), resolves and
loads the kernels, and prepares one argument buffer: the per-step values (6 pointers,
3 counts) in one struct at its start, every other kernel parameter packed once behind
them, one `void*[N]` array per kernel pointing into it, and one cuLaunchKernelEx
configuration per kernel. A hit patches only the per-step values, with one
`struct.pack_into`, writes grid and stream into the configuration and makes one driver
call per kernel (`cudalaunch`), with no Python object built but the step tuple. A
signature is kept only when its checks hold for every length (an index tensor of one
element may have any stride: such calls are checked in full every time).
The same tensor passed twice fails torch's guard: such calls are checked every time too.
`COMPRESSC_DEBUG_CHECKS=1` runs the full checks and the cuda-bindings launch on every call.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable, Sequence
from functools import cache

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


class Prepared:
    """One signature's argument buffer and launches; `run(...)` packs step values and launches."""

    __slots__ = ("buffer", "launches", "index", "device", "guard", "_plans", "_step")

    def __init__(self, kernels: Sequence[tuple[object, Sequence[Param], bool]], values: dict,
                 device_index: int, device: torch.device | None = None,
                 step_names: tuple[str, ...] = STEP_NAMES) -> None:
        self._step = STEP if step_names == STEP_NAMES else step_struct(step_names)
        params = [p for _, plist, _ in kernels for p in plist if p.name not in step_names]
        fixed = list({p.name: p for p in params}.values())
        self.buffer = ctypes.create_string_buffer(self._step.size + 8 * max(len(fixed), 1))
        base = ctypes.addressof(self.buffer)
        offset = {name: 8 * i for i, name in enumerate(step_names)}
        offset |= {p.name: self._step.size + 8 * i for i, p in enumerate(fixed)}
        _pack_fixed(self.buffer, fixed, values, self._step.size)
        self.index, self.device = device_index, device
        self.guard: Callable[..., bool] = _never
        self.launches = tuple(
            _launch_of(kernel, plist, base, offset, overlap) for kernel, plist, overlap in kernels
        )
        # libcuda launches run inline in run() (one Python frame less per kernel); None: any is not.
        # Each plan ends with its launch (for the retry of a failed one).
        plans = tuple(getattr(launch, "plan", None) for launch in self.launches)
        with_launch = zip(plans, self.launches, strict=True)
        self._plans = None if None in plans else tuple((*plan, launch) for plan, launch in with_launch)

    def run(self, step: tuple, num_rows: int) -> None:
        """Pack the per-step values and launch every kernel on torch's current stream."""
        self._step.pack_into(self.buffer, 0, *step)
        stream = _raw_stream(self.index) if _raw_stream is not None else 0
        plans = self._plans
        if plans is None:
            for launch in self.launches:
                if launch(num_rows, stream):
                    _retry_or_raise(launch, num_rows, stream)
            return
        for config, grids, grid_of, ex, args, launch in plans:
            grid = grids.get(num_rows) or grid_of(num_rows)
            if grid:  # 0: no rows to launch
                config.gridDimX, config.hStream = grid, stream
                if ex(*args):
                    _retry_or_raise(launch, num_rows, stream)


def step_struct(names: Sequence[str]) -> struct.Struct:
    """Another op's per-step values (a fused kernel's): pointers first, then the i32 counts
    (names starting with "num_" or holding "_num_"), 8-byte slots as STEP."""
    counts = [n.startswith("num_") or "_num_" in n for n in names]
    if counts != sorted(counts):
        raise ValueError(f"step values {names}: pointers must come before the counts")
    return struct.Struct("<" + "".join("i4x" if c else "Q" for c in counts))


def _pack_fixed(buffer: ctypes.Array, fixed: Sequence[Param], values: dict, at: int = STEP.size) -> None:
    layout = struct.Struct("<" + "".join(_FIXED[p.kind] for p in fixed))
    try:
        layout.pack_into(buffer, at, *[values[p.name] for p in fixed])
    except (KeyError, struct.error, TypeError, OverflowError):
        pack_args(fixed, values)  # raises the error naming the parameter
        raise


def _launch_of(kernel, params: Sequence[Param], base: int, offset: dict, overlap: bool) -> Callable:
    """launch(num_rows, stream) -> CUresult int of one kernel on the prepared buffer."""
    array = (ctypes.c_void_p * len(params))(*(base + offset[p.name] for p in params))
    lib = driver_library() if hasattr(kernel, "function") else None
    if lib is None:
        # no libcuda through ctypes (or a stand-in kernel): the loader's own launch, which raises
        def launch(num_rows: int, stream: int) -> int:
            kernel.launch_rows(num_rows, array, overlap_previous=overlap)
            return 0
    else:
        launch = FastKernel(kernel, lib, overlap).launcher(ctypes.c_void_p(ctypes.addressof(array)))
    # the driver reads the array during the call: keep it alive with the launch
    launch.array, launch.kernel, launch.via = array, kernel, "loader" if lib is None else "libcuda"
    return launch


def _retry_or_raise(launch: Callable, num_rows: int, stream: int) -> None:
    """A failed launch: make the device's primary context current (a new thread, or one that
    torch switched to another device) and launch again; raise CudaError if it still fails."""
    from compressc.runtime import loader

    loader.ensure_context(launch.kernel.device_index)
    result = launch(num_rows, stream)
    if result:
        raise loader.launch_error(launch.kernel.entry, result)


class SignatureCache:
    """Prepared launches by signature key, one table per op (see the module docstring)."""

    def __init__(self) -> None:
        self.entries: dict[tuple, Prepared] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple, prepared: Prepared, tensors: Sequence[torch.Tensor], free: int) -> None:
        """Keep `prepared` under `key`, guarded by the metadata of `tensors` (the last `free`
        of them with free lengths)."""
        prepared.guard = make_guard(tensors, free)
        with self._lock:
            if len(self.entries) >= MAX_ENTRIES:
                self.entries.clear()
            self.entries[key] = prepared

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()


def _never(*tensors: object) -> bool:
    return False


def make_guard(tensors: Sequence[torch.Tensor], free: int) -> Callable[..., bool]:
    """guard(*same_arguments) -> whether every tensor has the dtype, device, shape and strides
    of `tensors`, the sizes of the last `free` ones not compared."""
    dynamic = [len(tensors) - i <= free for i in range(len(tensors))]
    sizes = [[None] * t.dim() if d else list(t.shape) for t, d in zip(tensors, dynamic, strict=True)]
    native = _native_guard()
    if native is not None:
        strides = [list(t.stride()) for t in tensors]
        return native(*tensors, dynamic_dims_sizes=sizes, dynamic_dims_strides=strides).check
    want = signature(tensors, dynamic)
    return lambda *given: len(given) == len(want) and signature(given, dynamic) == want


def signature(tensors: Sequence[object], dynamic: Sequence[bool]) -> tuple:
    """What the guard compares, in Python; a non-tensor gives a signature no tensor has."""
    try:
        return tuple((t.dtype, t.device, t.dim() if d else tuple(t.shape), t.stride())
                     for t, d in zip(tensors, dynamic, strict=True))
    except (AttributeError, TypeError, ValueError):
        return ()


@cache
def _native_guard() -> type | None:
    """torch's C++ TensorGuards when it exists and behaves as the guard above says (checked
    once here on CPU tensors: a private API must not be trusted blindly)."""
    try:
        from torch._C._dynamo.guards import TensorGuards

        a, b = torch.zeros(4, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int32)
        guard = TensorGuards(a, b, dynamic_dims_sizes=[[None], [None, None]],
                             dynamic_dims_strides=[[1], [3, 1]]).check
        ok = guard(a, b) and guard(torch.zeros(9, dtype=torch.int64), torch.zeros(5, 3, dtype=torch.int32))
        wrong = (guard(a.int(), b), guard(a, b.t()), guard(a, torch.zeros(2, 3, 1, dtype=torch.int32)),
                 guard(a[None], b), guard(a, 7))
    except Exception:  # absent or changed: the Python guard is always there
        return None
    return TensorGuards if ok and not any(wrong) else None


def cacheable_index(t: torch.Tensor) -> bool:
    """Whether a per-step tensor passes its layout checks whatever its length: contiguous
    1-D index vectors and page tables with contiguous rows."""
    strides = t.stride()
    return strides == (1,) or (len(strides) == 2 and strides[1] == 1)

