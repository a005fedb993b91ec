"""Kernel argument packing: one ctypes value per parameter, in ABI order.

`cuLaunchKernel` takes `kernelParams`, an array of N `void*`, each pointing at the
bytes of one parameter; the driver reads the sizes from the cubin and copies the
values during the call (so nothing here must outlive the launch, graph capture
included). Pointers travel as 64-bit integers (`tensor.data_ptr()`).
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Mapping, Sequence

from compressc.specs.abi import Param
from compressc.specs.launch import GridRule, rule_problem
from compressc.specs.launch import launch_grid as launch_grid  # the runtime's grid rule, where callers look

Scalar = int | float

_CTYPES: dict[str, type] = {
    "ptr": ctypes.c_uint64,
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "f32": ctypes.c_float,
}
_SLOT = {"ptr": "Q", "i32": "i4x", "i64": "q", "f32": "f4x"}  # one 8-byte slot per parameter
_INT_RANGE = {
    "ptr": (0, 2**64),
    "i32": (-(2**31), 2**31),
    "i64": (-(2**63), 2**63),
}


def pack_args(params: Sequence[Param], values: Mapping[str, Scalar]) -> tuple[list, ctypes.Array]:
    """(keepalive, kernel_params) for `params` taken by name from `values`.

    keepalive holds the ctypes values; kernel_params is a `void*[N]` pointing at them
    in `params` order (pass `ctypes.addressof(kernel_params)` to cuLaunchKernel).
    Raises ValueError naming a missing or unexpected parameter, TypeError for a
    value of the wrong Python type, and ValueError for an out-of-range integer or a
    misaligned pointer.
    """
    _check_names(params, values)
    keepalive = [_to_ctype(p, values[p.name]) for p in params]
    kernel_params = (ctypes.c_void_p * len(params))(*(ctypes.addressof(v) for v in keepalive))
    kernel_params.values = keepalive  # the array holds only addresses: keep what they point at alive
    return keepalive, kernel_params


def _check_names(params: Sequence[Param], values: Mapping[str, Scalar]) -> None:
    names = [p.name for p in params]
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(
            f"kernel parameter {missing[0]!r} has no value (expected parameters: {', '.join(names)})"
        )
    extra = sorted(set(values) - set(names))
    if extra:
        raise ValueError(
            f"value given for {extra[0]!r}, which is not a kernel parameter "
            f"(expected parameters: {', '.join(names)})"
        )


def _to_ctype(param: Param, value: Scalar) -> ctypes._SimpleCData:
    ctype = _CTYPES.get(param.kind)
    if ctype is None:
        raise ValueError(f"kernel parameter {param.name!r} has unknown kind {param.kind!r}")
    if param.kind == "f32":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"kernel parameter {param.name!r} (f32) expects a float, got {type(value).__name__}"
            )
        return ctype(float(value))
    value = _as_int(param, value)
    lo, hi = _INT_RANGE[param.kind]
    if not lo <= value < hi:
        raise ValueError(
            f"kernel parameter {param.name!r} ({param.kind}) value {value} is out of range [{lo}, {hi})"
        )
    if param.kind == "ptr" and param.align and value % param.align:
        raise ValueError(
            f"kernel parameter {param.name!r} expects a pointer aligned to {param.align} bytes, "
            f"got {value:#x}"
        )
    return ctype(value)


def _as_int(param: Param, value: Scalar) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(
            f"kernel parameter {param.name!r} ({param.kind}) expects an int, got {type(value).__name__}"
        )
    return value.__index__()


class ArgPacker:
    """The launch-path packer of one parameter list: one struct.pack_into per launch.

    Values go into a per-thread buffer of 8-byte slots (each naturally aligned) whose
    `void*[N]` array is built once; reusing it is safe because cuLaunchKernel copies
    the values during the call (graph capture included). `values` may hold more names
    than the kernel takes. A value struct refuses is re-checked by `pack_args`, whose
    error names the parameter.
    """

    def __init__(self, params: Sequence[Param]) -> None:
        self.params = tuple(params)
        self._names = tuple(p.name for p in self.params)
        self._struct = struct.Struct("<" + "".join(_SLOT[p.kind] for p in self.params))
        self._local = threading.local()

    def pack(self, values: Mapping[str, Scalar]) -> ctypes.Array:
        """The kernel_params array holding `values` (valid until this thread's next pack)."""
        buffers = getattr(self._local, "buffers", None) or self._new_buffers()
        try:
            self._struct.pack_into(buffers[0], 0, *[values[name] for name in self._names])
        except (KeyError, struct.error, TypeError, OverflowError):
            pack_args(self.params, {n: values[n] for n in self._names if n in values})
            raise
        return buffers[1]

    def _new_buffers(self) -> tuple[ctypes.Array, ctypes.Array]:
        data = ctypes.create_string_buffer(max(self._struct.size, 1))
        base = ctypes.addressof(data)
        kernel_params = (ctypes.c_void_p * len(self.params))(*(base + 8 * i for i in range(len(self.params))))
        kernel_params.values = data  # the array holds only addresses: keep what they point at alive
        self._local.buffers = (data, kernel_params)
        return self._local.buffers


# -- launch grid ------------------------------------------------------------------------
def grid_rule_problem(policy: str) -> str | None:
    """What is wrong with a manifest's grid rule, or None when the runtime can launch it."""
    return rule_problem(policy)


def parse_grid(policy: str) -> GridRule:
    """The typed rule of a manifest's grid text (parsed once, when a kernel is loaded);
    GridRuleError (a ValueError) naming the rule otherwise."""
    return GridRule.parse(policy)
