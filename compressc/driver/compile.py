"""The AOT compile driver: emitted CuTe DSL source -> PTX -> cubin + resource report.

The only module besides emitted kernels that imports `cutlass`, and only inside
functions: importing this module costs nothing, so keys and stores stay fast.

An emitted module defines ENTRY, KERNEL, compile_args(), BLOCK and
names its `@cute.kernel` with `set_name_prefix(ENTRY, ...)`, so CuTe DSL calls the PTX
entry `ENTRY_0`; the driver renames it to ENTRY before nvJitLink turns it into SASS.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from compressc.cache.arch import normalize_arch

FLAVOR = "cu13"
_IR_MODULE = "cutlass._mlir._mlir_libs._cutlass_ir"
_FINGERPRINT_DISTS = {
    "cutlass_dsl": "nvidia-cutlass-dsl",
    "cutlass_dsl_libs": f"nvidia-cutlass-dsl-libs-{FLAVOR}",
    "nvjitlink": "nvidia-nvjitlink",
}
_PIP_HINT = f"pip install 'nvidia-cutlass-dsl[{FLAVOR}]' nvidia-nvjitlink"
# CuTe DSL settings that change the bytes it emits (line info embeds absolute paths).
_DSL_OUTPUT_VARS = (
    "DEBUG",
    "LINEINFO",
    "COMPILER_OPT",
    "DRYRUN",
    "ENABLE_PYIR",
    "AUTO_M2S",
    "TOLERATE_M2M",
    "COMPILER_BACKEND",
)
# The rest of the launch (grid rule, dynamic smem, programmatic launch) is not read back from
# the source: the build takes it from the lowered module (compressc.ir.launch.launch_info).
_CONTRACT = {"ENTRY": str, "BLOCK": tuple}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the DSL colours its diagnostics
K = TypeVar("K")


class CompileError(RuntimeError):
    """A kernel failed to compile or broke a resource rule; the message names the entry."""


class ToolchainError(RuntimeError):
    """The build toolchain is missing or is not the pinned flavour; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Resources:
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem_static: int  # the kernel's own static smem, without the 1 KiB sm_90 reserves
    barriers: int


@dataclass(frozen=True, slots=True)
class Artifacts:
    entry: str
    arch: str
    ptx: str
    cubin: bytes
    report: Resources
    block: tuple[int, int, int]
    seconds: float
    log: str  # nvJitLink's -verbose report, timing lines dropped


# -- toolchain ------------------------------------------------------------------------
def toolchain_fingerprint() -> dict[str, str]:
    """The toolchain versions that go into every cache key, without importing cutlass."""
    versions = {"flavor": FLAVOR}
    for field, dist in _FINGERPRINT_DISTS.items():
        try:
            versions[field] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise ToolchainError(f"{dist} is not installed; compressc builds need it: {_PIP_HINT}") from None
    return versions


def toolchain() -> dict[str, str]:
    """The fingerprint plus what the loaded toolchain reports; asserts the cu13 flavour."""
    _import_cute()
    from cuda.bindings import nvjitlink
    from cutlass.base_dsl.version_info import CUDA_VERSION

    info = toolchain_fingerprint()
    info["flavor"] = check_flavor(sys.modules[_IR_MODULE].__file__)
    info["nvvm"] = f"{CUDA_VERSION.major}.{CUDA_VERSION.minor}"
    info["nvjitlink_api"] = "{}.{}".format(*nvjitlink.version())
    return info


def check_flavor(ir_library: str) -> str:
    """The CUDA flavour of CuTe DSL's `_cutlass_ir` library; ToolchainError unless cu13."""
    match = re.search(r"_cutlass_ir\.(cu\d+)\.", os.path.basename(ir_library))
    flavor = match.group(1) if match else "unknown"
    if flavor != FLAVOR:
        raise ToolchainError(
            f"CuTe DSL loaded its {flavor} flavour ({ir_library}); compressc builds with {FLAVOR} only "
            f"(NVVM/ptxas 13.4). The DSL picks cu12 when the host driver is CUDA 12.x: import "
            f"compressc.driver.compile before cutlass in a fresh process (it pins {FLAVOR}), and make sure "
            f"it is installed: {_PIP_HINT}"
        )
    return flavor


def check_dsl_environment(environ: Mapping[str, str]) -> None:
    """Refuse CUTE_DSL_* settings that would change the emitted bytes."""
    bad = [f"CUTE_DSL_{v}={environ[f'CUTE_DSL_{v}']}" for v in _DSL_OUTPUT_VARS if f"CUTE_DSL_{v}" in environ]
    if bad:
        raise ToolchainError(
            f"unset {', '.join(bad)}: these CuTe DSL settings change the compiled bytes "
            "(line info embeds absolute paths) and shipped builds must be reproducible"
        )


def flavor_library(dist: str = f"nvidia-cutlass-dsl-libs-{FLAVOR}") -> Path:
    """The pinned flavour's `_cutlass_ir` extension, found through package metadata."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.startswith(f"_cutlass_ir.{FLAVOR}.") and file.suffix in (".so", ".pyd"):
            return Path(file.locate())
    raise ToolchainError(f"{dist} does not provide _cutlass_ir.{FLAVOR}: {_PIP_HINT}")


def _pin_flavor() -> None:
    """Load the cu13 `_cutlass_ir` before CuTe DSL picks one from the host driver.

    The DSL's own selector returns early when the module is already in sys.modules,
    so a build host with a CUDA 12.x driver still compiles with the cu13 toolchain.
    """
    if _IR_MODULE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(_IR_MODULE, flavor_library())
    module = importlib.util.module_from_spec(spec)
    sys.modules[_IR_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_IR_MODULE, None)
        raise


def _import_cute() -> ModuleType:
    check_dsl_environment(os.environ)
    _pin_flavor()
    import cutlass._mlir._mlir_libs as mlir_libs
    import cutlass.cute as cute

    mlir_libs._cutlass_ir = sys.modules[_IR_MODULE]  # what the DSL's selector would have bound
    check_flavor(sys.modules[_IR_MODULE].__file__)
    return cute


def build_options(arch: str) -> str:
    """The compile and link options of one build, as they go into the cache key."""
    arch = normalize_arch(arch)
    return f"cute.compile: --gpu-arch {arch}; nvjitlink: -arch={arch} -verbose"


# -- one kernel -----------------------------------------------------------------------
def compile_source(source: str, arch: str) -> Artifacts:
    """Compile one emitted module for `arch` to a cubin; CompileError on any failure."""
    arch = normalize_arch(arch)
    started = time.perf_counter()
    cute = _import_cute()  # before the module's own `import cutlass`: pins the flavour
    with tempfile.TemporaryDirectory(prefix="compressc-build-") as tmp:
        module = _load_module(source, Path(tmp))
        try:
            ptx = _compile_ptx(cute, module, arch, Path(tmp) / "dump")
        finally:
            sys.modules.pop(module.__name__, None)
    entry = module.ENTRY
    ptx = rename_entry(ptx, f"{entry}_0", entry)
    cubin, log = link_ptx(ptx, arch)
    report = parse_resources(log, entry)
    check_resources(entry, report)
    return Artifacts(
        entry=entry,
        arch=arch,
        ptx=ptx,
        cubin=cubin,
        report=report,
        block=module.BLOCK,
        seconds=round(time.perf_counter() - started, 3),
        log=log,
    )


def _load_module(source: str, tmp: Path) -> ModuleType:
    """Import `source` from a real file (CuTe DSL reads kernel source with inspect)."""
    name = f"compressc_kernel_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    path = tmp / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise CompileError(f"emitted module failed to import: {type(err).__name__}: {err}") from err
    try:
        check_contract(module)
    except CompileError:
        sys.modules.pop(name, None)
        raise
    return module


def check_contract(module: ModuleType) -> None:
    """CompileError unless `module` defines the emitted-module contract."""
    for name, kind in _CONTRACT.items():
        if not isinstance(getattr(module, name, None), kind):
            raise CompileError(
                f"emitted module must define {name} as a {kind.__name__}, got {getattr(module, name, None)!r}"
            )
    if not hasattr(module, "KERNEL") or not callable(getattr(module, "compile_args", None)):
        raise CompileError("emitted module must define KERNEL and compile_args()")
    block = module.BLOCK
    if len(block) != 3 or not all(isinstance(b, int) and b > 0 for b in block):
        raise CompileError(f"emitted module BLOCK must be three positive ints, got {block!r}")


def _compile_ptx(cute: ModuleType, module: ModuleType, arch: str, dump: Path) -> str:
    dump.mkdir()  # must exist: otherwise CuTe DSL silently writes nothing
    options = f"--gpu-arch {arch} --keep-ptx --dump-dir {dump}"
    try:
        compiled = cute.compile(module.KERNEL, *module.compile_args(), options=options)
    except Exception as err:
        message = _ANSI.sub("", str(err)).strip()
        raise CompileError(
            f"cute.compile failed for {module.ENTRY} ({arch}): {type(err).__name__}: {message}"
        ) from err
    names = list(getattr(compiled, "kernel_info", {}) or {})
    if f"{module.ENTRY}_0" not in names:
        raise CompileError(
            f"cute.compile named the kernel {names}, expected {module.ENTRY}_0: "
            f"the emitted module must call set_name_prefix({module.ENTRY!r}, ...)"
        )
    files = sorted(dump.glob("*.ptx"))
    if len(files) != 1:
        raise CompileError(f"expected one PTX file for {module.ENTRY} in the dump dir, found {len(files)}")
    return files[0].read_text()


def rename_entry(ptx: str, old: str, new: str) -> str:
    """Rename the symbol `old` to `new`; longer symbols that start with `old` stay."""
    return re.sub(rf"(?<![\w$.]){re.escape(old)}(?![\w$])", new, ptx)


def link_ptx(ptx: str, arch: str) -> tuple[bytes, str]:
    """PTX -> cubin with nvJitLink; returns (cubin, -verbose info log)."""
    from cuda.bindings import nvjitlink

    options = [f"-arch={normalize_arch(arch)}", "-verbose"]
    handle = nvjitlink.create(len(options), options)
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        nvjitlink.complete(handle)
        cubin = bytearray(nvjitlink.get_linked_cubin_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
        return bytes(cubin), _stable_log(_log(nvjitlink, handle, "info"))
    except nvjitlink.nvJitLinkError as err:
        raise CompileError(
            f"nvJitLink failed for {arch}: {err}\n{_log(nvjitlink, handle, 'error')}"
        ) from None
    finally:
        nvjitlink.destroy(handle)


def _log(nvjitlink: Any, handle: int, kind: str) -> str:
    size = getattr(nvjitlink, f"get_{kind}_log_size")(handle)
    buf = bytearray(size)
    if size:
        getattr(nvjitlink, f"get_{kind}_log")(handle, buf)
    return buf.rstrip(b"\0").decode(errors="replace").strip()


def _stable_log(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "Compile time" not in line) + "\n"


# -- the resource report --------------------------------------------------------------
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_resources(log: str, entry: str) -> Resources:
    """Registers, spills, stack, static smem and barriers of `entry` from nvJitLink's log."""
    block = _ptxas_block(log, entry)
    frame = _FRAME.search(block)
    spills = [tuple(map(int, m.groups())) for m in _FRAME.finditer(log)]  # every function
    final = re.search(rf"Function properties for '{re.escape(entry)}':\s*\n[^\n]*?(\d+) stack", log)
    return Resources(
        registers=_int(r"Used (\d+) registers", block),
        spill_stores=sum(s[1] for s in spills),
        spill_loads=sum(s[2] for s in spills),
        stack=max(int(frame.group(1)) if frame else 0, int(final.group(1)) if final else 0),
        smem_static=_int(r"(\d+) bytes smem", block),
        barriers=_int(r"used (\d+) barriers", block),
    )


def _ptxas_block(log: str, entry: str) -> str:
    start = log.find(f"Compiling entry function '{entry}'")
    if start < 0:
        raise CompileError(f"nvJitLink's report has no ptxas section for entry {entry!r}")
    end = log.find("Compiling entry function", start + 1)
    return log[start : end if end > 0 else len(log)]


def _int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def check_resources(entry: str, report: Resources) -> None:
    """CompileError if `entry` spills or uses a stack: both cost local-memory traffic."""
    if report.spill_stores or report.spill_loads or report.stack:
        raise CompileError(
            f"{entry} uses local memory: {report.stack} bytes stack, {report.spill_stores} bytes spill "
            f"stores, {report.spill_loads} bytes spill loads ({report.registers} registers); "
            "choose a schedule with fewer live values per lane"
        )


# -- many kernels ---------------------------------------------------------------------
def compile_many(
    jobs: Sequence[tuple[K, str, str]],
    workers: int,
    on_done: Callable[[K, Artifacts | BaseException], None] | None = None,
) -> dict[K, Artifacts | BaseException]:
    """Compile (key, source, arch) jobs in `workers` spawned processes.

    cute.compile is not thread-safe, so parallelism is processes; "spawn" gives each
    worker a clean interpreter. `on_done(key, artifacts_or_exception)` runs in this
    process as each job finishes; the result maps every key to the same value.
    """
    results: dict[K, Artifacts | BaseException] = {}
    if not jobs:
        return results
    context = multiprocessing.get_context("spawn")
    workers = max(1, min(workers, len(jobs)))
    with ProcessPoolExecutor(workers, context, initializer=watch_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(compile_source, source, arch): key for key, source, arch in jobs}
        for future in as_completed(futures):
            key = futures[future]
            results[key] = future.exception() or future.result()
            if on_done is not None:
                on_done(key, results[key])
    return results


def watch_parent(parent: int, interval: float = 0.5) -> None:
    """Compile-worker initializer: end the worker when `parent` is gone.

    A parent killed with SIGKILL closes nothing cleanly: each worker holds the write end
    of the pool's call-queue pipe itself, so it never reads EOF and would wait on that
    pipe forever, orphaned. A daemon thread notices the re-parenting instead
    (PR_SET_PDEATHSIG is not used: it fires when the *thread* that spawned the worker
    exits, which in a pool need not be the parent's end).
    """
    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=poll, name="compressc-watch-parent", daemon=True).start()
