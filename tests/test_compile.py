"""The AOT compile driver: real CuTe DSL -> PTX -> nvJitLink -> cubin, on the CPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import compressc.driver.compile as compile_module
from compressc.driver.compile import (
    Artifacts,
    CompileError,
    Resources,
    ToolchainError,
    build_options,
    check_dsl_environment,
    check_flavor,
    check_resources,
    compile_many,
    compile_source,
    flavor_library,
    link_ptx,
    parse_resources,
    rename_entry,
    toolchain,
    toolchain_fingerprint,
)
from compressc.driver.cubin import check_cubin
from compressc.specs.abi import Param

ENTRY = "cutlass_tiny_copy_f32"
# Each lane loads 8 floats (two 128-bit loads), sums them across the warp with
# five butterfly shuffles and stores the scaled row.
SOURCE = """
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32

ENTRY = "cutlass_tiny_copy_f32"
BLOCK = (32, 1, 1)
GRID = "rows"
SMEM_DYNAMIC = 0


class Tiny:
    @cute.jit
    def __call__(self, mIn: cute.Pointer, mOut: cute.Pointer, num_rows: Int32):
        self.kernel(mIn, mOut, num_rows).launch(grid=[num_rows, 1, 1], block=list(BLOCK))

    @cute.kernel
    def kernel(self, mIn: cute.Pointer, mOut: cute.Pointer, num_rows: Int32):
        tidx, _, _ = cute.arch.thread_idx()
        row, _, _ = cute.arch.block_idx()
        gIn = cute.make_tensor(mIn, cute.make_layout((num_rows, 256), stride=(256, 1)))
        gOut = cute.make_tensor(mOut, cute.make_layout((num_rows, 256), stride=(256, 1)))
        tXgX = cute.local_tile(gIn[row, None], (8,), (tidx,))
        tXrX = cute.make_fragment_like(tXgX)
        cute.autovec_copy(tXgX, tXrX)
        v = tXrX.load()
        s = v.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)
        for k in cutlass.range_constexpr(5):
            s = s + cute.arch.shuffle_sync_bfly(s, offset=1 << k)
        tXrX.store(v * s)
        cute.autovec_copy(tXrX, cute.local_tile(gOut[row, None], (8,), (tidx,)))


Tiny.kernel.set_name_prefix(ENTRY, remove_cutlass_symbol=True, keep_mangled_name=False)
KERNEL = Tiny()


def compile_args() -> list:
    def ptr():
        return cute.runtime.make_ptr(Float32, 0, cute.AddressSpace.gmem, assumed_align=16)

    return [ptr(), ptr(), Int32(1)]
"""
PARAMS = [Param("src", "ptr", "f32", 16), Param("dst", "ptr", "f32", 16), Param("num_rows", "i32")]
LOCAL_PTX = """.version 8.0
.target sm_90a
.address_size 64

.visible .entry cutlass_local(.param .u64 p, .param .u32 i)
{
	.local .align 4 .b8 buf[256];
	.reg .b64 %rd<6>;
	.reg .b32 %r<4>;
	ld.param.u64 %rd1, [p];
	ld.param.u32 %r1, [i];
	and.b32 %r2, %r1, 63;
	mul.wide.u32 %rd2, %r2, 4;
	mov.u64 %rd3, buf;
	add.u64 %rd4, %rd3, %rd2;
	st.local.u32 [%rd4], %r1;
	ld.local.u32 %r3, [%rd3+4];
	cvta.to.global.u64 %rd5, %rd1;
	st.global.u32 [%rd5], %r3;
	ret;
}
"""


@pytest.fixture(scope="module")
def tiny() -> Artifacts:
    return compile_source(SOURCE, "sm90")


def test_compile_source_produces_a_checked_cubin(tiny: Artifacts) -> None:
    assert (tiny.entry, tiny.arch, tiny.block) == (ENTRY, "sm_90a", (32, 1, 1))
    assert f".visible .entry {ENTRY}(" in tiny.ptx and f"{ENTRY}_0(" not in tiny.ptx
    assert ".target sm_90a" in tiny.ptx and ".loc" not in tiny.ptx and ".file" not in tiny.ptx
    report = tiny.report
    assert (report.spill_stores, report.spill_loads, report.stack, report.smem_static) == (0, 0, 0, 0)
    assert 0 < report.registers < 64 and tiny.seconds > 0
    assert f"Compiling entry function '{ENTRY}' for 'sm_90a'" in tiny.log and "Compile time" not in tiny.log
    info = check_cubin(tiny.cubin, ENTRY, PARAMS, tiny.block, arch="sm_90a")
    assert info.registers == report.registers


def test_builds_are_byte_identical_across_processes(tiny: Artifacts) -> None:
    again = compile_source(SOURCE, "sm_90a")
    assert (again.ptx, again.cubin) == (tiny.ptx, tiny.cubin)
    done = []
    bad = "raise RuntimeError('boom')\n"
    jobs = [("ok", SOURCE, "sm_90a"), ("bad", bad, "sm_90a")]
    results = compile_many(jobs, workers=2, on_done=lambda key, result: done.append((key, result)))
    assert sorted(key for key, _ in done) == ["bad", "ok"] and dict(done) == results
    assert (results["ok"].ptx, results["ok"].cubin) == (tiny.ptx, tiny.cubin)
    assert isinstance(results["bad"], CompileError)
    assert str(results["bad"]) == "emitted module failed to import: RuntimeError: boom"


def test_compile_many_with_nothing_to_do() -> None:
    assert compile_many([], workers=4) == {}


def test_toolchain_reports_the_pinned_flavour(tiny: Artifacts) -> None:
    info = toolchain()
    assert info["flavor"] == "cu13" and info["nvvm"] == "13.4" and info["nvjitlink_api"].startswith("13.")
    assert toolchain_fingerprint().items() <= info.items()
    assert set(toolchain_fingerprint()) == {"flavor", "cutlass_dsl", "cutlass_dsl_libs", "nvjitlink"}
    assert build_options("sm90") == "cute.compile: --gpu-arch sm_90a; nvjitlink: -arch=sm_90a -verbose"


def test_wrong_flavour_is_refused() -> None:
    with pytest.raises(ToolchainError) as err:
        check_flavor(
            "/site-packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu12.cpython-311-x86_64-linux-gnu.so"
        )
    assert str(err.value).startswith("CuTe DSL loaded its cu12 flavour (")
    assert "compressc builds with cu13 only" in str(err.value)
    assert "pip install 'nvidia-cutlass-dsl[cu13]' nvidia-nvjitlink" in str(err.value)


def test_missing_flavour_library_names_the_pip_command() -> None:
    with pytest.raises(ToolchainError, match=r"no-such-dist does not provide _cutlass_ir.cu13: pip install"):
        flavor_library("no-such-dist")
    assert flavor_library().name.startswith("_cutlass_ir.cu13.")


def test_byte_changing_dsl_settings_are_refused() -> None:
    check_dsl_environment({"CUTE_DSL_ARCH": "sm_90a", "HOME": "/root"})
    with pytest.raises(ToolchainError, match=r"unset CUTE_DSL_LINEINFO=1: these CuTe DSL settings change"):
        check_dsl_environment({"CUTE_DSL_LINEINFO": "1"})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ENTRY = 1\n", "emitted module must define ENTRY as a str, got 1"),
        (
            'ENTRY = "e"\nBLOCK = (1, 1, 1)\nGRID = "rows"\nSMEM_DYNAMIC = 0\n',
            "emitted module must define KERNEL and compile_args()",
        ),
        (
            'ENTRY = "e"\nBLOCK = (0, 1)\nGRID = "rows"\nSMEM_DYNAMIC = 0\nKERNEL = 1\n'
            "def compile_args(): pass\n",
            "emitted module BLOCK must be three positive ints, got (0, 1)",
        ),
        ("import nonexistent_module_xyz\n", "emitted module failed to import: ModuleNotFoundError"),
        (
            SOURCE.replace("Tiny.kernel.set_name_prefix", "(lambda *a, **k: None)"),
            "cute.compile named the kernel ['",
        ),
        (
            SOURCE.replace("return [ptr(), ptr(), Int32(1)]", "return [ptr()]"),
            f"cute.compile failed for {ENTRY} (sm_90a): ",
        ),
    ],
)
def test_contract_and_compile_errors(tiny: Artifacts, source: str, message: str) -> None:
    with pytest.raises(CompileError) as err:
        compile_source(source, "sm_90a")
    assert str(err.value).startswith(message)
    if "named the kernel" in message:
        assert str(err.value).endswith(
            f"expected {ENTRY}_0: the emitted module must call set_name_prefix('{ENTRY}', ...)"
        )


def test_rename_entry_replaces_whole_symbols_only() -> None:
    ptx = ".globl\tk_0\n.entry k_0(\n.param .u64 k_0_param_0\n)\ncall k_01;\n[k_0+4]"
    assert (
        rename_entry(ptx, "k_0", "k") == ".globl\tk\n.entry k(\n.param .u64 k_0_param_0\n)\ncall k_01;\n[k+4]"
    )


def test_local_memory_is_refused() -> None:
    cubin, log = link_ptx(LOCAL_PTX, "sm_90a")
    report = parse_resources(log, "cutlass_local")
    assert (report.stack, report.spill_stores, report.registers > 0) == (256, 0, True)
    with pytest.raises(CompileError) as err:
        check_resources("cutlass_local", report)
    assert str(err.value).startswith(
        "cutlass_local uses local memory: 256 bytes stack, 0 bytes spill stores, 0 bytes spill loads ("
    )
    assert "choose a schedule with fewer live values per lane" in str(err.value)


def test_spills_are_summed_over_every_function() -> None:
    log = (
        "ptxas info    : Function properties for helper\n"
        "ptxas         .     0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
        "ptxas info    : Function properties for k\n"
        "ptxas         .     16 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 8 bytes smem\n"
    )
    report = parse_resources(log, "k")
    assert report == Resources(
        registers=255, spill_stores=20, spill_loads=16, stack=16, smem_static=8, barriers=1
    )
    with pytest.raises(
        CompileError, match=r"^k uses local memory: 16 bytes stack, 20 bytes spill stores, 16"
    ):
        check_resources("k", report)


def test_missing_report_and_link_failure() -> None:
    with pytest.raises(CompileError, match="nvJitLink's report has no ptxas section for entry 'nope'"):
        parse_resources("ptxas info    : 0 bytes gmem\n", "nope")
    with pytest.raises(CompileError) as err:
        link_ptx(".version 9.4\n.target sm_90a\nthis is not ptx\n", "sm_90a")
    assert str(err.value).startswith("nvJitLink failed for sm_90a: ")
    assert "ERROR" in str(err.value)


def test_missing_toolchain_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compile_module._FINGERPRINT_DISTS, "nvjitlink", "no-such-dist")
    with pytest.raises(
        ToolchainError, match=r"no-such-dist is not installed; compressc builds need it: pip install"
    ):
        toolchain_fingerprint()


def test_a_compile_that_writes_no_ptx_is_an_error(tmp_path: Path) -> None:
    class FakeCute:
        @staticmethod
        def compile(*args: object, options: str) -> SimpleNamespace:
            return SimpleNamespace(kernel_info={"cutlass_e_0": {}})

    module = SimpleNamespace(ENTRY="cutlass_e", KERNEL=None, compile_args=list)
    with pytest.raises(CompileError, match="expected one PTX file for cutlass_e in the dump dir, found 0"):
        compile_module._compile_ptx(FakeCute, module, "sm_90a", tmp_path / "dump")
