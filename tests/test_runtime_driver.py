"""The runtime's driver calls never make cuda-bindings resolve its entry-point table.

Issue 17: compute-sanitizer reported 34 CUDA_ERROR_INVALID_VALUE of cuGetProcAddress_v2, the
entry points of CUDA 13.1-13.3 that cuda-bindings 13.3.1 asks an r580 (13.0) driver for on its
first driver call. Here a stand-in libcuda.so.1 (compiled with the host's C compiler) logs every
call: loading, context handling, both launch paths and error names must reach libcuda without a
single cuGetProcAddress, while one call of cuda.bindings.driver makes hundreds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STUB = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
static FILE* out(void) { static FILE* f; if (!f) f = fopen(getenv("STUB_LOG"), "a"); return f; }
static void note(const char* what) { fprintf(out(), "%s\n", what); fflush(out()); }
CUresult cuGetProcAddress_v2(const char* s, void** p, int v, unsigned long long f, int* st) {
  fprintf(out(), "cuGetProcAddress %s %d\n", s, v); fflush(out());
  if (p) *p = 0;
  if (st) *st = 1;
  return 500; }
CUresult cuGetProcAddress(const char* s, void** p, int v, unsigned long long f) {
  return cuGetProcAddress_v2(s, p, v, f, 0); }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return 0; }
CUresult cuInit(unsigned f) { note("cuInit"); return 0; }
CUresult cuDeviceGet(int* d, int i) { note("cuDeviceGet"); *d = i; return 0; }
CUresult cuDeviceGetAttribute(int* v, int a, int d) {
  fprintf(out(), "cuDeviceGetAttribute %d\n", a); fflush(out());
  *v = a == 75 ? 9 : a == 16 ? 132 : 0; return 0; }
CUresult cuDevicePrimaryCtxRetain(void** c, int d) {
  note("cuDevicePrimaryCtxRetain"); *c = (void*)0x1000; return 0; }
static void* current = 0;
CUresult cuCtxGetCurrent(void** c) { note("cuCtxGetCurrent"); *c = current; return 0; }
CUresult cuCtxSetCurrent(void* c) { note("cuCtxSetCurrent"); current = c; return 0; }
CUresult cuModuleLoadData(void** m, const void* image) {
  note(memcmp(image, "\x7f" "ELF", 4) ? "cuModuleLoadData bad" : "cuModuleLoadData");
  *m = (void*)0x2000; return 0; }
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
  fprintf(out(), "cuModuleGetFunction %s\n", name); fflush(out()); *f = (void*)0x3000; return 0; }
CUresult cuModuleUnload(void* m) { note("cuModuleUnload"); return 0; }
CUresult cuFuncSetAttribute(void* f, int a, int v) {
  fprintf(out(), "cuFuncSetAttribute %d %d\n", a, v); return 0; }
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void* f, int t, size_t s) { *n = 2; return 0; }
CUresult cuOccupancyMaxActiveClusters(int* n, void* f, const void* c) { *n = 16; return 0; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void* stream, void** params, void** extra) {
  fprintf(out(), "cuLaunchKernel %u %u\n", gx, bx); fflush(out()); return 0; }
CUresult cuLaunchKernelEx(const unsigned* config, void* f, void** params, void** extra) {
  fprintf(out(), "cuLaunchKernelEx %u %u\n", config[0], config[3]); fflush(out()); return 0; }
CUresult cuGetErrorName(CUresult r, const char** s) {
  *s = r == 201 ? "CUDA_ERROR_INVALID_CONTEXT" : "CUDA_ERROR_X"; return 0; }
"""

SCRIPT = """
import ctypes, torch
from compressc.runtime import fastpath, loader
from compressc.runtime.resolve import KernelImage

torch.cuda.get_device_properties = None  # the loader asks the driver (cuDeviceGetAttribute), not torch
torch.cuda.get_device_capability = None
torch.cuda.is_current_stream_capturing = lambda: False
loader.current_stream = lambda index: 0
manifest = {"key": "k" * 64, "entry": "cutlass_probe", "arch": "sm_90a", "block": [128, 1, 1],
            "smem_dynamic": 64 * 1024, "grid": "wave:2,cluster:2", "programmatic": True}
kernel = loader.load_kernel(KernelImage(manifest, b"\\x7fELF" + bytes(60), "stub"), 0)
params = (ctypes.c_void_p * 1)(0)
kernel.launch(3, params)                          # the checked path, a cluster: cuLaunchKernelEx
plain = loader.LoadedKernel("p", "cutlass_plain", 0, (64, 1, 1), 0, kernel.module, kernel.function)
plain.launch_rows(5, params)                       # the checked path, no cluster: cuLaunchKernel
# the eager path: ctypes cuLaunchKernelEx
fast = fastpath.FastKernel(plain, fastpath.driver_library())
launch = fast.launcher(ctypes.c_void_p(ctypes.addressof(params)))
assert launch(7, 0) == 0
print(str(loader.launch_error("cutlass_plain", 201)))
"""


def _stub(tmp_path: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in libcuda")
    (tmp_path / "stub.c").write_text(STUB)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(tmp_path / "libcuda.so.1"), str(tmp_path / "stub.c")],
                   check=True, capture_output=True)
    return tmp_path


def _run(tmp_path: Path, code: str) -> tuple[str, list[str]]:
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), STUB_LOG=str(log), CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, log.read_text().splitlines() if log.exists() else []


def test_loading_and_launching_call_libcuda_without_cugetprocaddress(tmp_path):
    stdout, calls = _run(_stub(tmp_path), SCRIPT)
    assert [c for c in calls if c.startswith("cuGetProcAddress")] == []
    assert calls[:2] == ["cuInit", "cuDeviceGet"] and calls.count("cuInit") == 1
    # capability and SM count from the driver (torch's queries are None in the script)
    assert {"cuDeviceGetAttribute 75", "cuDeviceGetAttribute 76", "cuDeviceGetAttribute 16"} <= set(calls)
    assert "cuDevicePrimaryCtxRetain" in calls
    assert "cuModuleLoadData" in calls and "cuModuleGetFunction cutlass_probe" in calls
    assert "cuFuncSetAttribute 8 65536" in calls  # MAX_DYNAMIC_SHARED_SIZE_BYTES, more than 48 KiB
    assert "cuLaunchKernelEx 3 128" in calls and "cuLaunchKernel 5 64" in calls
    assert "cuLaunchKernelEx 7 64" in calls
    assert stdout.strip() == "cuLaunchKernelEx(cutlass_plain) failed: CUDA_ERROR_INVALID_CONTEXT (201)"


def test_one_cuda_bindings_driver_call_resolves_the_whole_table(tmp_path):
    """The stand-in sees what compute-sanitizer saw: why the runtime does not call cuda-bindings."""
    _, calls = _run(_stub(tmp_path), (
        "from cuda.bindings import driver\ntry:\n    driver.cuDriverGetVersion()\n"
        "except RuntimeError:  # the stand-in resolves nothing\n    pass\n"))
    lookups = [c.split() for c in calls if c.startswith("cuGetProcAddress")]
    assert len(lookups) > 300
    assert any(int(version) > 13000 for _, _, version in lookups)  # newer than an r580 driver


def test_driver_constants_match_cuda_bindings():
    from cuda.bindings import driver

    from compressc.runtime import cudriver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    assert cudriver.FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES == int(attr)
    device = driver.CUdevice_attribute
    assert cudriver.DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT == int(
        device.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
    assert cudriver.DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR == int(
        device.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
    assert cudriver.DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR == int(
        device.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)


def _fake_cuda():
    from types import SimpleNamespace

    return SimpleNamespace(cuLaunchKernel=SimpleNamespace(), cuLaunchKernelEx=SimpleNamespace())


def test_the_driver_library_is_opened_without_find_library_when_its_soname_opens(monkeypatch):
    """ctypes.util.find_library runs ldconfig and gcc in subprocesses (13 ms of a cold start)."""
    import ctypes.util

    from compressc.runtime import cudalaunch

    opened = []
    monkeypatch.setattr(cudalaunch.ctypes, "CDLL", lambda name: opened.append(name) or _fake_cuda())
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: pytest.fail("ran find_library"))
    cudalaunch.driver_library.cache_clear()
    try:
        assert cudalaunch.driver_library() is not None and opened == ["libcuda.so.1"]
    finally:
        cudalaunch.driver_library.cache_clear()


def test_find_library_is_the_fallback_when_the_soname_does_not_open(monkeypatch):
    import ctypes.util

    from compressc.runtime import cudalaunch

    def cdll(name):
        if name == "libcuda.so.1":
            raise OSError("no driver")
        return _fake_cuda()

    monkeypatch.setattr(cudalaunch.ctypes, "CDLL", cdll)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libcuda.so" if name == "cuda" else None)
    cudalaunch.driver_library.cache_clear()
    try:
        assert cudalaunch.driver_library() is not None
        monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
        cudalaunch.driver_library.cache_clear()
        assert cudalaunch.driver_library() is None
    finally:
        cudalaunch.driver_library.cache_clear()
