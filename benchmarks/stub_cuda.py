"""A stand-in `libcuda.so.1` for timing the runtime's host side on a machine without a GPU.

Every driver call the runtime makes through ctypes (`compressc.runtime.cudriver`, the
launches of `cudalaunch`) is exported, returns CUDA_SUCCESS at once and writes a plausible
output (a non-null handle, one resident CTA): a real ctypes foreign call with the real
arguments and no driver work. Built here with gcc. Used by benchmarks/host_path_cpu.py
(as a CDLL) and by `benchmarks/cold_start.py --cpu` (as the libcuda.so.1 that dlopen
finds first, through LD_LIBRARY_PATH of the child processes).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

SOURCE = r"""
typedef unsigned long long u64;
int cuInit(unsigned flags) { return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
int cuDeviceGetAttribute(int *value, int attribute, int device) {  /* an H200: sm_90, 132 SMs */
  *value = attribute == 75 ? 9 : attribute == 76 ? 0 : attribute == 16 ? 132 : 0; return 0; }
int cuDevicePrimaryCtxRetain(u64 *ctx, int device) { *ctx = 0x100 + device; return 0; }
int cuCtxGetCurrent(u64 *ctx) { *ctx = 0x100; return 0; }
int cuCtxSetCurrent(u64 ctx) { return 0; }
int cuModuleLoadData(u64 *module, const void *image) { *module = 0x200; return 0; }
int cuModuleGetFunction(u64 *function, u64 module, const char *name) { *function = 0x300; return 0; }
int cuModuleUnload(u64 module) { return 0; }
int cuFuncSetAttribute(u64 function, int attribute, int value) { return 0; }
int cuOccupancyMaxActiveBlocksPerMultiprocessor(int *n, u64 f, int threads, u64 smem) { *n = 1; return 0; }
int cuOccupancyMaxActiveClusters(int *n, u64 f, const void *config) { *n = 16; return 0; }
int cuGetErrorName(int code, const char **name) { *name = "CUDA_ERROR_STUB"; return 0; }
int cuLaunchKernel(void) { return 0; }
int cuLaunchKernelEx(void) { return 0; }
"""


def build(directory: Path) -> Path:
    """Compile the stand-in into `directory`/libcuda.so.1 and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    source, lib = directory / "stub_cuda.c", directory / "libcuda.so.1"
    source.write_text(SOURCE)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    return lib


def load(directory: Path) -> ctypes.CDLL:
    """The stand-in, built and opened, with the launches typed as `cudalaunch` types them."""
    from compressc.runtime.cudalaunch import _typed

    return _typed(ctypes.CDLL(str(build(directory))))
