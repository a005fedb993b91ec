"""Kernel argument packing: one ctypes value per parameter, in ABI order.

`cuLaunchKernel` takes `kernelParams`, an array of N `void*`, each pointing at the
bytes of one parameter; the driver reads the sizes from the cubin and copies the
values during the call (so nothing here must outlive the launch, graph capture
included). Pointers travel as 64-bit integers (`tensor.data_ptr()`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

from compressc.specs.abi import Param

Scalar = int | float

_CTYPES: dict[str, type] = {
    "ptr": ctypes.c_uint64,
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "f32": ctypes.c_float,
}
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
