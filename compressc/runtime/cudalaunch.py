"""The cheapest kernel launch Python has: libcuda's cuLaunchKernelEx called through ctypes.

cuda-bindings wraps every driver call in argument objects (CUstream, CUfunction, a
CUlaunchConfig built per call) and cost 9.1-9.6 us per launch on the H200 host; a ctypes
call into the same libcuda (cuda-bindings dlopens the same `libcuda.so.1`, so handles are
shared) of cuLaunchKernelEx with its configuration built once passes 4 prebuilt ctypes
objects (0.3 us of ctypes on the build host, against 0.6 us for cuLaunchKernel's 11
arguments). `benchmarks/host_path.py` measures the three on the GPU host.

Only the launch goes through here: loading, attributes and errors stay in `loader`
(cuda-bindings). When libcuda cannot be opened (no driver, an unusual platform),
`driver_library()` is None and the fast path uses `LoadedKernel.launch` instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from functools import cache

from compressc.runtime.args import launch_grid

_c_uint, _c_void_p = ctypes.c_uint, ctypes.c_void_p
# cuda.h: CUlaunchAttributeID values (also driver.CUlaunchAttributeID; checked by a test)
ATTR_CLUSTER_DIMENSION = 4
ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6


class LaunchAttributeValue(ctypes.Union):
    """cuda.h CUlaunchAttributeValue: a 64-byte union, 8-byte aligned (it holds pointers)."""

    _fields_ = [("pad", ctypes.c_char * 64), ("align", ctypes.c_uint64), ("dims", _c_uint * 3),
                ("flag", ctypes.c_int)]


class LaunchAttribute(ctypes.Structure):
    """cuda.h CUlaunchAttribute: the id, 4 pad bytes, then the value (72 bytes)."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", LaunchAttributeValue)]


class LaunchConfig(ctypes.Structure):
    """cuda.h CUlaunchConfig (56 bytes): grid, block, smem, stream, attributes."""

    _fields_ = [("gridDimX", _c_uint), ("gridDimY", _c_uint), ("gridDimZ", _c_uint),
                ("blockDimX", _c_uint), ("blockDimY", _c_uint), ("blockDimZ", _c_uint),
                ("sharedMemBytes", _c_uint), ("hStream", _c_void_p),
                ("attrs", ctypes.POINTER(LaunchAttribute)), ("numAttrs", _c_uint)]


@cache
def driver_library() -> ctypes.CDLL | None:
    """libcuda with cuLaunchKernel / cuLaunchKernelEx typed, or None where it cannot be opened."""
    if sys.platform == "win32":
        return _open("nvcuda.dll")
    # find_library runs ldconfig and gcc in subprocesses (13 ms of a cold start on the build
    # host): asked only when the driver's soname does not open
    return _open("libcuda.so.1") or _open(ctypes.util.find_library("cuda"))


def _open(name: str | None) -> ctypes.CDLL | None:
    if not name:
        return None
    try:
        return _typed(ctypes.CDLL(name))
    except OSError:
        return None


def _typed(lib: ctypes.CDLL) -> ctypes.CDLL:
    # Only the result type is declared: `argtypes` makes ctypes convert each argument through
    # from_param (~4 us for cuLaunchKernel's 11, measured), while untyped calls pass ints as C
    # ints (grid, block and smem sizes are below 2**31) and prebuilt c_void_p as pointers (~0.7 us).
    lib.cuLaunchKernel.restype = ctypes.c_int
    lib.cuLaunchKernelEx.restype = ctypes.c_int
    return lib


def launch_config(cluster: int, block: tuple[int, int, int], smem: int, programmatic: bool) -> LaunchConfig:
    """A reusable cuLaunchKernelEx configuration; the caller sets gridDimX and hStream per launch."""
    attrs = []
    if cluster > 1:
        attrs.append(LaunchAttribute(id=ATTR_CLUSTER_DIMENSION))
        attrs[-1].value.dims[:] = (cluster, 1, 1)
    if programmatic:
        attrs.append(LaunchAttribute(id=ATTR_PROGRAMMATIC_STREAM_SERIALIZATION))
        attrs[-1].value.flag = 1
    array = (LaunchAttribute * max(len(attrs), 1))(*attrs)
    config = LaunchConfig(1, 1, 1, *block, smem, None, array, len(attrs))
    config.keep = array  # the struct holds only a pointer: keep the attributes alive with it
    return config


class FastKernel:
    """One loaded kernel's launches with everything but the rows, the stream and the argument
    buffer fixed: cuLaunchKernelEx with a configuration built once (clusters and the
    programmatic launch overlapping the previous grid are launch attributes in it).

    cuLaunchKernelEx takes 4 arguments where cuLaunchKernel takes 11: ctypes converts each
    Python argument per call, and 4 prebuilt ctypes objects cost about 0.5 us less than 11
    Python ints (benchmarks/host_path_cpu.py); the driver then reads grid and stream from the
    configuration, whose two fields are written per launch. `plan(kernel_params)` gives what
    `fastpath.Prepared.run` launches with; `launcher(kernel_params)` the same as one call,
    `launch(num_rows, stream) -> CUresult int` (0: launched, or no rows).
    """

    __slots__ = ("kernel", "grids", "_lib", "_overlap")

    def __init__(self, kernel, lib: ctypes.CDLL, overlap_previous: bool = False) -> None:
        self.kernel, self._lib, self._overlap = kernel, lib, overlap_previous
        self.grids: dict[int, int] = {}  # num_rows -> CTAs

    def grid(self, num_rows: int) -> int:
        grid = self.grids.get(num_rows)
        if grid is None:
            k = self.kernel
            grid = launch_grid(k.grid, num_rows, k.sm_count, k.resident, k.max_clusters)
            if len(self.grids) > 4096:  # one entry per distinct T: bound it for long-running servers
                self.grids.clear()
            self.grids[num_rows] = grid
        return grid

    def plan(self, params: _c_void_p) -> tuple:
        """(config, grids, grid, cuLaunchKernelEx, its 4 arguments) for one argument buffer: the
        caller sets config.gridDimX (grids.get(T) or grid(T)) and config.hStream, then calls."""
        kernel = self.kernel
        programmatic = kernel.programmatic and self._overlap
        config = launch_config(kernel.cluster, kernel.block, kernel.smem_dynamic, programmatic)
        config.gridDimY = getattr(kernel.grid, "parts", 1)  # a fused kernel: a row of CTAs per part
        function = _c_void_p(int(kernel.function))
        args = (ctypes.byref(config), function, params, None)
        return config, self.grids, self.grid, self._lib.cuLaunchKernelEx, args

    def launcher(self, params: _c_void_p) -> Callable[[int, int], int]:
        config, grids, grid_of, ex, args = self.plan(params)

        def launch(num_rows: int, stream: int) -> int:
            ctas = grids.get(num_rows) or grid_of(num_rows)
            if not ctas:
                return 0
            config.gridDimX, config.hStream = ctas, stream
            return ex(*args)

        launch.plan = (config, grids, grid_of, ex, args)
        return launch
