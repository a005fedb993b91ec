"""Load cubins and launch them through the CUDA driver API.

The driver calls go through ctypes on libcuda (`cudriver`, `cudalaunch`): a call of any
`cuda.bindings.driver` function would make cuda-bindings resolve every driver entry point,
and a driver older than the bindings refuses the newer ones (the 34 CUDA_ERROR_INVALID_VALUE
of cuGetProcAddress_v2 compute-sanitizer reported; `cudriver` says more). The only module of
compressc that imports `cuda.bindings`, for its CUresult names only (an enum: no driver call),
and only to name an error: importing `cuda.bindings.driver` costs 20-60 ms, which a process
whose torch has not imported it would pay on its first kernel lookup (the cold start).
Kernels are loaded once per (process, device, cache key) into the device's primary context,
which torch's CUDA runtime shares, and launched on torch's current stream. The launch path
makes no host synchronisation, so it is safe inside CUDA graph capture.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import NamedTuple

import torch

from compressc.runtime import cudalaunch, cudriver
from compressc.runtime.args import launch_grid, parse_grid
from compressc.runtime.resolve import KernelImage, arch_for_capability, arch_runs_on
from compressc.specs.launch import GridRule

_DEFAULT_SMEM_LIMIT = 48 * 1024  # bytes of dynamic smem a launch gets without opting in
_LOCK = threading.Lock()
_LOADED: dict[tuple[int, str], LoadedKernel] = {}
_PRIMARY: dict[int, int] = {}  # device index -> primary CUcontext handle (as int)
_initialised = False
# torch's raw current-stream getter (what Inductor's generated code calls): no Stream object.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


class CudaError(RuntimeError):
    """A CUDA driver call failed; the message names the call and the CUresult."""

    def __init__(self, call: str, result: int, hint: str = "") -> None:
        self.call, self.result = call, int(result)
        name = _error_name(self.result)
        super().__init__(f"{call} failed: {name} ({self.result}){hint}")


class ArchMismatchError(RuntimeError):
    """The kernel's cubin was built for another GPU architecture than the device's."""


def launch_error(entry: str, code: int) -> CudaError:
    """The error of a launch made through ctypes (`cudalaunch`), which returns a bare CUresult int."""
    return CudaError(f"cuLaunchKernelEx({entry})", code)


def _error_name(result: int) -> str:
    """The driver's name of a CUresult, else cuda-bindings' enum name (which calls no driver)."""
    name = cudriver.error_name(result)
    if name is not None:
        return name
    try:
        from cuda.bindings import driver

        return driver.CUresult(result).name
    except (ImportError, ValueError):
        return f"CUresult {result}"


def _check(call: str, out: tuple, hint: str = ""):
    """Raise CudaError unless out[0] is CUDA_SUCCESS (0); return the remaining output."""
    err, *rest = out
    if err != 0:
        raise CudaError(call, err, hint)
    return rest[0] if len(rest) == 1 else tuple(rest)


# -- contexts -------------------------------------------------------------------------
def _device(device_index: int) -> int:
    """The driver's CUdevice of an ordinal (the driver initialised once per process)."""
    global _initialised
    if not _initialised:
        _check("cuInit", cudriver.cuInit(0))
        _initialised = True
    return _check("cuDeviceGet", cudriver.cuDeviceGet(device_index))


def _primary_context(device_index: int) -> int:
    """The primary context of `device_index`, retained once per process (torch uses it too)."""
    ctx = _PRIMARY.get(device_index)
    if ctx is not None:
        return ctx
    device = _device(device_index)
    ctx = int(_check("cuDevicePrimaryCtxRetain", cudriver.cuDevicePrimaryCtxRetain(device)))
    _PRIMARY[device_index] = ctx
    return ctx


def ensure_context(device_index: int) -> None:
    """Make the device's primary context current on this thread (a no-op when it is)."""
    want = _primary_context(device_index)
    current = _check("cuCtxGetCurrent", cudriver.cuCtxGetCurrent())
    if int(current) != want:
        _check("cuCtxSetCurrent", cudriver.cuCtxSetCurrent(want))


# -- architectures ----------------------------------------------------------------------
# Asked of the driver through the loader's own libcuda handle (microseconds), not of torch, whose
# first query fills its whole cudaDeviceProp (0.23 ms on the H200 host: benchmarks/NOTES.md,
# session 9 run 1); cached, as a device's capability and SM count do not change.
def _attribute(device_index: int, attribute: int) -> int:
    device = _device(device_index)
    return int(_check("cuDeviceGetAttribute", cudriver.cuDeviceGetAttribute(attribute, device)))


@functools.cache
def device_capability(device_index: int) -> tuple[int, int]:
    return (_attribute(device_index, cudriver.DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            _attribute(device_index, cudriver.DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))


@functools.cache
def device_sm_count(device_index: int) -> int:
    return _attribute(device_index, cudriver.DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)


def device_arch(device_index: int) -> str:
    """The arch whose kernels this device runs ("sm_90a" on an H100)."""
    return arch_for_capability(device_capability(device_index))


def check_arch(arch: str, device_index: int) -> None:
    """Raise ArchMismatchError unless SASS for `arch` runs on the device."""
    capability = device_capability(device_index)
    if arch_runs_on(arch, capability):
        return
    want = arch_for_capability(capability)
    raise ArchMismatchError(
        f"kernel built for {arch} cannot run on cuda:{device_index} (compute capability "
        f"{capability[0]}.{capability[1]}); build it for this GPU with `compressc build --arch {want}`"
    )


# -- kernels ----------------------------------------------------------------------------
# A NamedTuple, not a dataclass: as immutable, and 0.05 ms to define instead of 0.4 ms, on the
# runtime's cold-start path (benchmarks/NOTES.md, session 8).
class LoadedKernel(NamedTuple):
    """A kernel function loaded on one device, ready to launch with a grid of rows."""

    key: str
    entry: str
    device_index: int
    block: tuple[int, int, int]
    smem_dynamic: int
    module: int  # CUmodule handle
    function: int  # CUfunction handle
    grid: GridRule = GridRule("rows")  # the manifest's launch rule, see compressc.runtime.args.launch_grid
    sm_count: int = 1
    resident: int = 0  # CTAs of this kernel one SM holds (the driver's occupancy); 0 = unknown
    cluster: int = 1  # CTAs per thread-block cluster (the grid rule's ',cluster:S')
    max_clusters: int = 0  # clusters of this kernel the device holds at once; 0 = unknown
    programmatic: bool = False  # waits for the grid it overlaps itself (griddepcontrol.wait)

    def launch_rows(self, num_rows: int, kernel_params: ctypes.Array, stream: int | None = None,
                    overlap_previous: bool = False) -> None:
        """Launch over `num_rows` launched rows with the grid the manifest's policy asks for."""
        grid = launch_grid(self.grid, num_rows, self.sm_count, self.resident, self.max_clusters)
        if grid:
            self.launch(grid, kernel_params, stream, overlap_previous)

    def launch(self, grid_x: int, kernel_params: ctypes.Array, stream: int | None = None,
               overlap_previous: bool = False) -> None:
        """Launch on `stream` (default: torch's current stream of the device); no host sync.

        `overlap_previous`: the caller has just launched, on this stream, the kernel whose
        output this one reads (C128A: compress before store), and nothing else this kernel
        reads before its griddepcontrol.wait is written by it; a programmatic kernel then
        starts under that kernel's tail. Otherwise every launch is an ordinary one.
        """
        if stream is None:
            stream = current_stream(self.device_index)
        ensure_context(self.device_index)
        lib = cudriver.library()
        params, function = ctypes.c_void_p(ctypes.addressof(kernel_params)), ctypes.c_void_p(self.function)
        programmatic = self.programmatic and overlap_previous
        if self.cluster > 1 or programmatic:
            config = cudalaunch.launch_config(self.cluster, self.block, self.smem_dynamic, programmatic)
            config.gridDimX, config.gridDimY, config.hStream = grid_x, self.grid.parts, stream
            out = lib.cuLaunchKernelEx(ctypes.byref(config), function, params, None)
            _check(f"cuLaunchKernelEx({self.entry})", (out,))
            return
        bx, by, bz = self.block
        # grid y: a fused kernel's row of CTAs per part (docs/kernels.md §12)
        out = lib.cuLaunchKernel(function, grid_x, self.grid.parts, 1, bx, by, bz, self.smem_dynamic,
                                 ctypes.c_void_p(stream), params, None)
        _check(f"cuLaunchKernel({self.entry})", (out,))


def current_stream(device_index: int) -> int:
    """The handle of torch's current stream on the device (the capture stream while capturing)."""
    if _raw_stream is not None:
        return _raw_stream(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def load_kernel(image: KernelImage, device_index: int) -> LoadedKernel:
    """The loaded kernel of `image` on `device_index`, loading it on first use."""
    cache_key = (device_index, image.key)
    kernel = _LOADED.get(cache_key)
    if kernel is not None:
        return kernel
    with _LOCK:
        kernel = _LOADED.get(cache_key)
        if kernel is None:
            kernel = _load(image, device_index)
            _LOADED[cache_key] = kernel
    return kernel


def _load(image: KernelImage, device_index: int) -> LoadedKernel:
    check_arch(image.arch, device_index)
    ensure_context(device_index)
    hint = f" while loading {image.entry} from {image.origin}"
    if torch.cuda.is_current_stream_capturing():
        hint += "; run the op once before CUDA graph capture so its kernel is loaded"
    grid = parse_grid(str(image.manifest.get("grid", "rows")))  # once: a bad rule fails before loading
    cluster = grid.cluster
    # The driver copies the image during the call; the buffer only has to outlive it.
    buffer = ctypes.create_string_buffer(image.cubin, len(image.cubin))
    module = _check("cuModuleLoadData", cudriver.cuModuleLoadData(ctypes.addressof(buffer)), hint)
    try:
        function = _check(
            "cuModuleGetFunction", cudriver.cuModuleGetFunction(module, image.entry.encode()), hint
        )
        if image.smem_dynamic > _DEFAULT_SMEM_LIMIT:
            attr = cudriver.FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            out = cudriver.cuFuncSetAttribute(function, attr, image.smem_dynamic)
            _check("cuFuncSetAttribute", out, hint)
        threads = image.block[0] * image.block[1] * image.block[2]
        resident = _check(
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            cudriver.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, threads, image.smem_dynamic),
            hint,
        )
        max_clusters = 0
        if cluster > 1:
            # how many clusters fit at once: clusters live inside one GPC, so this can be less
            # than the SMs' CTA slots / cluster
            config = cudalaunch.launch_config(cluster, image.block, image.smem_dynamic, False)
            config.gridDimX = cluster
            max_clusters = _check("cuOccupancyMaxActiveClusters",
                                  cudriver.cuOccupancyMaxActiveClusters(function, config), hint)
    except CudaError:
        cudriver.cuModuleUnload(module)
        raise
    sm_count = device_sm_count(device_index)
    return LoadedKernel(
        image.key, image.entry, device_index, image.block, image.smem_dynamic, module, function,
        grid, int(sm_count), int(resident), cluster, int(max_clusters),
        image.manifest.get("programmatic", False) is True,
    )


def loaded_kernels() -> dict[tuple[int, str], LoadedKernel]:
    """A snapshot of the process's loaded kernels, keyed by (device index, cache key)."""
    return dict(_LOADED)
