"""The cubin reader against real cubins compiled here (CuTe DSL + nvJitLink, no GPU)."""

from __future__ import annotations

import struct

import pytest

from compressc.driver.compile import Artifacts, compile_source
from compressc.driver.cubin import (
    EIATTR_CBANK_PARAM_SIZE,
    EM_CUDA,
    Cubin,
    CubinError,
    check_cubin,
    expected_offsets,
    parse_eiattrs,
    read_cubin,
)
from compressc.specs.abi import Param

# Five parameters of four kinds: the i64 after an i32 needs 4 bytes of padding.
SOURCE = """
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

ENTRY = "cutlass_test_scale"
BLOCK = (64, 1, 1)
GRID = "rows"
SMEM_DYNAMIC = 0


class Scale:
    @cute.jit
    def __call__(self, mX: cute.Pointer, mIdx: cute.Pointer, num_rows: Int32, row_stride: Int64,
                 alpha: Float32):
        self.kernel(mX, mIdx, num_rows, row_stride, alpha).launch(grid=[num_rows, 1, 1], block=list(BLOCK))

    @cute.kernel
    def kernel(self, mX: cute.Pointer, mIdx: cute.Pointer, num_rows: Int32, row_stride: Int64,
               alpha: Float32):
        tidx, _, _ = cute.arch.thread_idx()
        row, _, _ = cute.arch.block_idx()
        gIdx = cute.make_tensor(mIdx, cute.make_layout(num_rows))
        gX = cute.make_tensor(mX + (Int64(gIdx[row]) * row_stride + Int64(tidx)), cute.make_layout(1))
        gX[0] = gX[0] * alpha


Scale.kernel.set_name_prefix(ENTRY, remove_cutlass_symbol=True, keep_mangled_name=False)
KERNEL = Scale()


def compile_args() -> list:
    x = cute.runtime.make_ptr(Float32, 0, cute.AddressSpace.gmem, assumed_align=16)
    idx = cute.runtime.make_ptr(Int32, 0, cute.AddressSpace.gmem, assumed_align=4)
    return [x, idx, Int32(1), Int64(1), Float32(1.0)]
"""
ENTRY = "cutlass_test_scale"
PARAMS = [
    Param("x", "ptr", "f32", 16),
    Param("idx", "ptr", "i32", 4),
    Param("num_rows", "i32"),
    Param("row_stride", "i64"),
    Param("alpha", "f32"),
]


@pytest.fixture(scope="module")
def built() -> dict[str, Artifacts]:
    return {arch: compile_source(SOURCE, arch) for arch in ("sm_90a", "sm_100a")}


@pytest.fixture(scope="module")
def cubin(built: dict[str, Artifacts]) -> bytes:
    return built["sm_90a"].cubin


def test_header_and_eflags(built: dict[str, Artifacts]) -> None:
    hopper, blackwell = Cubin(built["sm_90a"].cubin), Cubin(built["sm_100a"].cubin)
    # ABI version 8: SM number in bits 8-15; the 'a' bit (0x8) stays clear even for sm_90a.
    assert (hopper.abi_version, hopper.e_flags, hopper.sm, hopper.arch) == (8, 0x6005A04, 90, "sm_90a")
    assert (blackwell.e_flags, blackwell.sm, blackwell.arch) == (0x6006402, 100, "sm_100a")
    assert struct.unpack_from("<H", built["sm_90a"].cubin, 18)[0] == EM_CUDA
    assert hopper.entries() == [ENTRY] and ENTRY in hopper.symbols()


def test_entry_attributes(cubin: bytes) -> None:
    info = read_cubin(cubin, ENTRY)
    assert [(p.ordinal, p.offset, p.size) for p in info.params] == [
        (0, 0, 8),
        (1, 8, 8),
        (2, 16, 4),
        (3, 24, 8),
        (4, 32, 4),
    ]
    assert [p.log_align for p in info.params] == [4, 2, 0, 0, 0]  # assumed_align 16 and 4
    assert info.param_bytes == 36 and info.reqntid == (64, 1, 1)
    assert info.registers is not None and info.registers > 0 and info.frame_size == 0 and info.barriers == 0


def test_check_cubin_accepts_the_declared_abi(built: dict[str, Artifacts]) -> None:
    for arch, artifacts in built.items():
        info = check_cubin(artifacts.cubin, ENTRY, PARAMS, (64, 1, 1), arch=arch)
        assert info.registers == artifacts.report.registers
    assert expected_offsets(PARAMS) == [0, 8, 16, 24, 32]


def test_arch_falls_back_to_eflags_without_the_ptxas_note(cubin: bytes) -> None:
    stripped = cubin.replace(b".note.nv.tkinfo\0", b".note.nv.xxinfo\0")
    assert Cubin(stripped).arch == "sm_90"
    check_cubin(stripped, ENTRY, PARAMS, None, arch="sm_90a")  # only the SM number can be checked
    with pytest.raises(CubinError, match="built for sm_90, expected sm_100a"):
        check_cubin(stripped, ENTRY, PARAMS, None, arch="sm_100a")


def _patch_attr(cubin: bytes, attr: int, value: int) -> bytes:
    section = Cubin(cubin).sections[f".nv.info.{ENTRY}"]
    data, at = bytearray(cubin), section.offset
    while data[at + 1] != attr:
        at += 4 + (struct.unpack_from("<H", data, at + 2)[0] if data[at] == 4 else 0)
    struct.pack_into("<H", data, at + 2, value)
    return bytes(data)


def _with(cubin: bytes, at: int, raw: bytes) -> bytes:
    return cubin[:at] + raw + cubin[at + len(raw) :]


@pytest.mark.parametrize(
    ("mutate", "params", "block", "arch", "message"),
    [
        (lambda c: b"hello" * 20, PARAMS, None, None, "not a cubin: no ELF magic (first bytes b'hell')"),
        (
            lambda c: _with(c, 4, b"\x01"),
            PARAMS,
            None,
            None,
            "not a cubin: ELF class 1 / data 1, expected 64-bit little-endian",
        ),
        (
            lambda c: _with(c, 18, struct.pack("<H", 62)),
            PARAMS,
            None,
            None,
            "not a cubin: e_machine is 62, expected EM_CUDA (190)",
        ),
        (lambda c: c[:200], PARAMS, None, None, "truncated or corrupt cubin (200 bytes)"),
        (
            lambda c: c,
            PARAMS,
            None,
            "sm_100a",
            f"cubin for entry '{ENTRY}' is built for sm_90a, expected sm_100a",
        ),
        (lambda c: c, PARAMS[:4], None, None, f"entry '{ENTRY}' takes 5 parameters, the ABI declares 4"),
        (
            lambda c: c,
            [*PARAMS[:3], Param("row_stride", "i32"), PARAMS[4]],
            None,
            None,
            f"entry '{ENTRY}' parameter 3 (row_stride: i32) is at offset 24 size 8 (ordinal 3); "
            "the ABI expects offset 20 size 4",
        ),
        (
            lambda c: c,
            [Param("x", "ptr", "f32", 4), *PARAMS[1:]],
            None,
            None,
            f"entry '{ENTRY}' assumes x is 16-byte aligned, the ABI promises only 4",
        ),
        (
            lambda c: _patch_attr(c, EIATTR_CBANK_PARAM_SIZE, 40),
            PARAMS,
            None,
            None,
            f"entry '{ENTRY}' has 40 bytes of parameters, the ABI declares 36",
        ),
        (
            lambda c: c,
            PARAMS,
            (128, 1, 1),
            None,
            f"entry '{ENTRY}' requires block [64, 1, 1], the manifest says [128, 1, 1]",
        ),
    ],
)
def test_check_cubin_errors(cubin: bytes, mutate, params, block, arch, message: str) -> None:
    with pytest.raises(CubinError) as err:
        check_cubin(mutate(cubin), ENTRY, params, block, arch=arch)
    assert str(err.value).startswith(message)


def test_missing_entry_lists_the_entries(cubin: bytes) -> None:
    with pytest.raises(CubinError, match=f"cubin has no entry 'cutlass_other'; its entries are: {ENTRY}"):
        check_cubin(cubin, "cutlass_other", PARAMS, None)


def test_eiattr_records_sit_on_a_four_byte_grid() -> None:
    data = bytes([1, 0x35, 0, 0, 2, 0x4C, 1, 0, 3, 0x19, 36, 0, 4, 0x10, 4, 0]) + struct.pack("<I", 7)
    assert [(a.fmt, a.attr, a.value) for a in parse_eiattrs(data)] == [
        (1, 0x35, None),
        (2, 0x4C, 1),
        (3, 0x19, 36),
        (4, 0x10, struct.pack("<I", 7)),
    ]
    with pytest.raises(CubinError, match="unknown EIATTR format 7 at byte 0 of an .nv.info section"):
        parse_eiattrs(bytes([7, 1, 0, 0]))
