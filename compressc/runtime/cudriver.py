"""The dozen CUDA driver calls the loader makes, through ctypes on libcuda (no cuda-bindings call).

cuda-bindings resolves its whole table of driver entry points on the first call of any
`cuda.bindings.driver` function: `_init_driver` in `cuda/bindings/_internal/driver_linux.pyx`
calls `cuGetProcAddress_v2` once per entry point (526 in 13.5.0), each with the CUDA version
that introduced it. A driver older than the bindings refuses the newer ones: on the r580
(CUDA 13.0) host, cuda-bindings 13.3.1 asks for 34 entry points of CUDA 13.1-13.3, and
`compute-sanitizer --tool memcheck` reports each refusal as a CUDA_ERROR_INVALID_VALUE of
`cuGetProcAddress_v2` (once the driver is initialised, which torch has done by then). No
environment variable skips the table (only CUDA_PYTHON_CUDA_PER_THREAD_DEFAULT_STREAM is read).

So the runtime calls libcuda itself, through the `libcuda.so.1` handle `cudalaunch` opens
(the same library cuda-bindings and torch use, so handles are shared), by the exported
names, which are the ABI versions these calls have had since CUDA 4-12 (none of them has a
`_v2`). cuda-bindings' enums and structs stay usable: they call nothing. Each function
returns a cuda-bindings-style tuple `(CUresult int, *outputs)`.
"""

from __future__ import annotations

import ctypes
from functools import cache

from compressc.runtime.cudalaunch import LaunchConfig, driver_library

_int, _uint, _void_p, _size_t = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t
_P = ctypes.POINTER
# cuda.h: CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (checked by a test)
FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
# cuda.h: CUdevice_attribute values (checked by a test against cuda-bindings' enum)
DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76

# name -> argtypes (every call returns a CUresult int). The launches are not here: they stay
# untyped for speed (cudalaunch) and are called with ctypes objects.
SIGNATURES: dict[str, tuple] = {
    "cuInit": (_uint,),
    "cuDeviceGet": (_P(_int), _int),
    "cuDeviceGetAttribute": (_P(_int), _int, _int),
    "cuDevicePrimaryCtxRetain": (_P(_void_p), _int),
    "cuCtxGetCurrent": (_P(_void_p),),
    "cuCtxSetCurrent": (_void_p,),
    "cuModuleLoadData": (_P(_void_p), _void_p),
    "cuModuleGetFunction": (_P(_void_p), _void_p, ctypes.c_char_p),
    "cuModuleUnload": (_void_p,),
    "cuFuncSetAttribute": (_void_p, _int, _int),
    "cuOccupancyMaxActiveBlocksPerMultiprocessor": (_P(_int), _void_p, _int, _size_t),
    "cuOccupancyMaxActiveClusters": (_P(_int), _void_p, _P(LaunchConfig)),
    "cuGetErrorName": (_int, _P(ctypes.c_char_p)),
}


class DriverUnavailableError(RuntimeError):
    """libcuda.so.1 cannot be opened (no NVIDIA driver on this machine)."""


@cache
def library() -> ctypes.CDLL:
    """libcuda with the calls above typed; DriverUnavailableError where it cannot be opened."""
    lib = driver_library()
    if lib is None:
        raise DriverUnavailableError("the CUDA driver library (libcuda.so.1) cannot be opened: "
                                     "is the NVIDIA driver installed?")
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _int
    return lib


def _value(out: ctypes._SimpleCData) -> int:
    return int(out.value or 0)


def cuInit(flags: int) -> tuple[int]:
    return (library().cuInit(flags),)


def cuDeviceGet(ordinal: int) -> tuple[int, int]:
    out = _int()
    return library().cuDeviceGet(ctypes.byref(out), ordinal), _value(out)


def cuDeviceGetAttribute(attribute: int, device: int) -> tuple[int, int]:
    out = _int()
    return library().cuDeviceGetAttribute(ctypes.byref(out), attribute, device), _value(out)


def cuDevicePrimaryCtxRetain(device: int) -> tuple[int, int]:
    out = _void_p()
    return library().cuDevicePrimaryCtxRetain(ctypes.byref(out), device), _value(out)


def cuCtxGetCurrent() -> tuple[int, int]:
    out = _void_p()
    return library().cuCtxGetCurrent(ctypes.byref(out)), _value(out)


def cuCtxSetCurrent(context: int) -> tuple[int]:
    return (library().cuCtxSetCurrent(context),)


def cuModuleLoadData(image: int) -> tuple[int, int]:
    out = _void_p()
    return library().cuModuleLoadData(ctypes.byref(out), image), _value(out)


def cuModuleGetFunction(module: int, name: bytes) -> tuple[int, int]:
    out = _void_p()
    return library().cuModuleGetFunction(ctypes.byref(out), module, name), _value(out)


def cuModuleUnload(module: int) -> tuple[int]:
    return (library().cuModuleUnload(module),)


def cuFuncSetAttribute(function: int, attribute: int, value: int) -> tuple[int]:
    return (library().cuFuncSetAttribute(function, attribute, value),)


def cuOccupancyMaxActiveBlocksPerMultiprocessor(function: int, threads: int, smem: int) -> tuple[int, int]:
    out = _int()
    err = library().cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(out), function, threads, smem)
    return err, _value(out)


def cuOccupancyMaxActiveClusters(function: int, config: LaunchConfig) -> tuple[int, int]:
    out = _int()
    err = library().cuOccupancyMaxActiveClusters(ctypes.byref(out), function, ctypes.byref(config))
    return err, _value(out)


def error_name(code: int) -> str | None:
    """The driver's name of a CUresult ("CUDA_ERROR_INVALID_VALUE"), or None if it has none."""
    try:
        lib = library()
    except DriverUnavailableError:
        return None
    out = ctypes.c_char_p()
    if lib.cuGetErrorName(code, ctypes.byref(out)) != 0 or out.value is None:
        return None
    return out.value.decode()
