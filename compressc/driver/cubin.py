"""A dependency-free reader for the parts of a cubin (CUDA ELF64) that define its ABI.

Facts used below, measured on cubins that nvJitLink 13.5 writes (EI_ABIVERSION 8):

* e_ident: ELFCLASS64, little-endian, EI_OSABI 0x41, e_machine EM_CUDA = 190.
* e_flags, ABI version 8: bits 8-15 hold the SM number (sm_80 0x6005004,
  sm_90/sm_90a 0x6005a04, sm_100a/sm_100f 0x6006402, sm_103a 0x6006702, sm_120a
  0x6007802). The 'a' bit (EF_CUDA_ACCELERATORS, 0x8) is NOT set for sm_90a or
  sm_100a: an sm_90 and an sm_90a cubin have identical e_flags. Older ABI version 7
  keeps the SM in bits 0-7 and 'a' in bit 11 (0x800).
* The exact target, suffix included, is in the ptxas note of `.note.nv.tkinfo`
  (tool options "-arch sm_90a"), which is where `arch` below comes from.
* `.nv.info*` sections are EIATTR records on a 4-byte grid: u8 format, u8 attribute,
  then u16: the value for EIFMT_NVAL (0)/BVAL/HVAL, the payload length for EIFMT_SVAL.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import NamedTuple

from compressc.cache.arch import normalize_arch, sm_number
from compressc.specs.abi import Param

EM_CUDA = 190
EIFMT_NVAL, EIFMT_BVAL, EIFMT_HVAL, EIFMT_SVAL = 1, 2, 3, 4
EIATTR_REQNTID = 0x10
EIATTR_FRAME_SIZE = 0x11
EIATTR_KPARAM_INFO = 0x17
EIATTR_CBANK_PARAM_SIZE = 0x19
EIATTR_REGCOUNT = 0x2F
EIATTR_NUM_BARRIERS = 0x4C
_TKINFO_ARCH = re.compile(r"-arch\s+(sm_\d+[af]?)")


class CubinError(ValueError):
    """The cubin is not what the manifest/ABI says it is; the message says how."""


# The records below are NamedTuples, not dataclasses: immutable all the same, and 0.05 ms to
# define instead of 0.4 ms each, on the runtime's cold-start path (check_image; NOTES.md session 8).
class Attr(NamedTuple):
    fmt: int
    attr: int
    value: int | bytes | None


class KParam(NamedTuple):
    """One EIATTR_KPARAM_INFO record: where a parameter lives in the param bank."""

    ordinal: int
    offset: int
    size: int
    log_align: int  # log2 of a pointer parameter's assumed pointee alignment; 0 for scalars


class CubinInfo(NamedTuple):
    arch: str  # "sm_90a" from the ptxas note, else "sm_90" from e_flags
    sm: int
    abi_version: int
    e_flags: int
    entry: str
    params: tuple[KParam, ...]
    param_bytes: int | None  # EIATTR_CBANK_PARAM_SIZE
    reqntid: tuple[int, int, int] | None
    registers: int | None  # EIATTR_REGCOUNT from the global .nv.info
    frame_size: int | None
    barriers: int


class _Section(NamedTuple):
    name: str
    offset: int
    size: int


class Cubin:
    """The sections, symbols and CUDA attributes of one cubin image."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self._check_header()
        self.abi_version = self.data[8]
        self.e_flags = _u32(self.data, 48)
        try:
            self.sections = self._read_sections()
        except (struct.error, IndexError) as err:
            raise CubinError(f"truncated or corrupt cubin ({len(self.data)} bytes): {err}") from None

    def _check_header(self) -> None:
        data = self.data
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise CubinError(f"not a cubin: no ELF magic (first bytes {data[:4]!r})")
        if data[4] != 2 or data[5] != 1:
            raise CubinError(
                f"not a cubin: ELF class {data[4]} / data {data[5]}, expected 64-bit little-endian"
            )
        machine = struct.unpack_from("<H", data, 18)[0]
        if machine != EM_CUDA:
            raise CubinError(f"not a cubin: e_machine is {machine}, expected EM_CUDA ({EM_CUDA})")

    def _read_sections(self) -> dict[str, _Section]:
        shoff = struct.unpack_from("<Q", self.data, 40)[0]
        entsize, count, strndx = struct.unpack_from("<HHH", self.data, 58)
        headers = [struct.unpack_from("<IIQQQQIIQQ", self.data, shoff + i * entsize) for i in range(count)]
        names_at = headers[strndx][4]
        return {(name := _cstr(self.data, names_at + h[0])): _Section(name, h[4], h[5]) for h in headers}

    def section(self, name: str) -> bytes | None:
        sec = self.sections.get(name)
        return None if sec is None else self.data[sec.offset : sec.offset + sec.size]

    @property
    def sm(self) -> int:
        if self.abi_version >= 8:
            return (self.e_flags >> 8) & 0xFF
        return self.e_flags & 0xFF

    @property
    def arch(self) -> str:
        """The exact target from the ptxas note, else the SM number from e_flags."""
        for tool, options in _tool_notes(self.section(".note.nv.tkinfo") or b""):
            if tool == "ptxas" and (match := _TKINFO_ARCH.search(options)):
                return match.group(1)
        return f"sm_{self.sm}"

    def entries(self) -> list[str]:
        return sorted(n.removeprefix(".nv.info.") for n in self.sections if n.startswith(".nv.info."))

    def symbols(self) -> list[str]:
        symtab, strtab = self.sections.get(".symtab"), self.sections.get(".strtab")
        if symtab is None or strtab is None:
            return []
        return [
            _cstr(self.data, strtab.offset + _u32(self.data, symtab.offset + i))
            for i in range(0, symtab.size, 24)
        ]

    def attrs(self, section: str) -> list[Attr]:
        return parse_eiattrs(self.section(section) or b"")

    def info(self, entry: str) -> CubinInfo:
        """Everything this module knows about `entry`; CubinError if it is not there."""
        if f".nv.info.{entry}" not in self.sections:
            raise CubinError(
                f"cubin has no entry {entry!r}; its entries are: {', '.join(self.entries()) or 'none'}"
            )
        attrs = self.attrs(f".nv.info.{entry}")
        symbols = self.symbols()
        per_symbol = self._global_values(symbols.index(entry) if entry in symbols else -1)
        kparams = (_kparam(a.value) for a in attrs if a.attr == EIATTR_KPARAM_INFO)
        return CubinInfo(
            arch=self.arch,
            sm=self.sm,
            abi_version=self.abi_version,
            e_flags=self.e_flags,
            entry=entry,
            params=tuple(sorted(kparams, key=lambda p: p.ordinal)),
            param_bytes=_first(attrs, EIATTR_CBANK_PARAM_SIZE),
            reqntid=_reqntid(_first(attrs, EIATTR_REQNTID)),
            registers=per_symbol.get(EIATTR_REGCOUNT),
            frame_size=per_symbol.get(EIATTR_FRAME_SIZE),
            barriers=_first(attrs, EIATTR_NUM_BARRIERS) or 0,
        )

    def _global_values(self, symbol: int) -> dict[int, int]:
        """The global .nv.info records (symbol index, value) that belong to `symbol`."""
        values = {}
        for a in self.attrs(".nv.info"):
            if a.fmt == EIFMT_SVAL and len(a.value) == 8 and _u32(a.value, 0) == symbol:
                values[a.attr] = _u32(a.value, 4)
        return values


def parse_eiattrs(data: bytes) -> list[Attr]:
    """Decode one `.nv.info*` section into its EIATTR records."""
    attrs, at = [], 0
    while at + 4 <= len(data):
        fmt, attr, half = data[at], data[at + 1], struct.unpack_from("<H", data, at + 2)[0]
        at += 4
        if fmt == EIFMT_SVAL:
            attrs.append(Attr(fmt, attr, data[at : at + half]))
            at += half
        elif fmt in (EIFMT_BVAL, EIFMT_HVAL):
            attrs.append(Attr(fmt, attr, half))
        elif fmt == EIFMT_NVAL:
            attrs.append(Attr(fmt, attr, None))
        else:
            raise CubinError(f"unknown EIATTR format {fmt} at byte {at - 4} of an .nv.info section")
    return attrs


def read_cubin(cubin: bytes, entry: str) -> CubinInfo:
    return Cubin(cubin).info(entry)


def check_cubin(
    cubin: bytes,
    entry: str,
    params: Sequence[Param],
    block: Sequence[int] | None,
    *,
    arch: str | None = None,
) -> CubinInfo:
    """Check arch, entry, parameter layout and required block against the declared ABI."""
    info = read_cubin(cubin, entry)
    if arch is not None:
        _check_arch(info, normalize_arch(arch))
    _check_params(info, params)
    if block is not None and info.reqntid is not None and tuple(block) != info.reqntid:
        raise CubinError(
            f"entry {entry!r} requires block {list(info.reqntid)}, the manifest says {list(block)}"
        )
    return info


def expected_offsets(params: Sequence[Param]) -> list[int]:
    """C layout: each parameter at the next multiple of its (natural) size."""
    offsets, end = [], 0
    for p in params:
        offset = -(-end // p.size) * p.size
        offsets.append(offset)
        end = offset + p.size
    return offsets


def _check_arch(info: CubinInfo, want: str) -> None:
    exact = info.arch != f"sm_{info.sm}"  # the ptxas note named the target, suffix included
    if (exact and info.arch != want) or info.sm != sm_number(want):
        raise CubinError(f"cubin for entry {info.entry!r} is built for {info.arch}, expected {want}")


def _check_params(info: CubinInfo, params: Sequence[Param]) -> None:
    if len(info.params) != len(params):
        raise CubinError(
            f"entry {info.entry!r} takes {len(info.params)} parameters, the ABI declares {len(params)}"
        )
    for i, (got, param, offset) in enumerate(zip(info.params, params, expected_offsets(params), strict=True)):
        if (got.ordinal, got.offset, got.size) != (i, offset, param.size):
            raise CubinError(
                f"entry {info.entry!r} parameter {i} ({param.name}: {param.kind}) is at offset {got.offset} "
                f"size {got.size} (ordinal {got.ordinal}); the ABI expects offset {offset} size {param.size}"
            )
        if param.kind == "ptr" and param.align and (1 << got.log_align) > param.align:
            raise CubinError(
                f"entry {info.entry!r} assumes {param.name} is {1 << got.log_align}-byte aligned, "
                f"the ABI promises only {param.align}"
            )
    end = expected_offsets(params)[-1] + params[-1].size if params else 0
    if info.param_bytes is not None and info.param_bytes != end:
        raise CubinError(
            f"entry {info.entry!r} has {info.param_bytes} bytes of parameters, the ABI declares {end}"
        )


def _kparam(value: bytes) -> KParam:
    # u32 index, u16 ordinal, u16 offset, u32 flags: bits 0-7 log2 pointee alignment,
    # bits 18-31 size in bytes (cuobjdump's "Pointee's logAlignment" and "Size").
    ordinal, offset, flags = struct.unpack_from("<HHI", value, 4)
    return KParam(ordinal=ordinal, offset=offset, size=flags >> 18, log_align=flags & 0xFF)


def _reqntid(value: bytes | None) -> tuple[int, int, int] | None:
    return None if value is None else struct.unpack_from("<III", value, 0)


def _first(attrs: list[Attr], attr: int) -> int | bytes | None:
    return next((a.value for a in attrs if a.attr == attr), None)


def _tool_notes(data: bytes) -> list[tuple[str, str]]:
    """(tool name, tool options) of each `.note.nv.tkinfo` note.

    A note is namesz, descsz, type (u32 each), the 4-aligned name, the 4-aligned desc;
    the desc starts with six u32: version, then offsets of object file name, tool
    name, tool version, branch and options into the strings that follow at byte 24.
    """
    notes, at = [], 0
    while at + 12 <= len(data):
        namesz, descsz, _ = struct.unpack_from("<III", data, at)
        desc_at = at + 12 + (-(-namesz // 4) * 4)
        desc = data[desc_at : desc_at + descsz]
        at = desc_at + (-(-descsz // 4) * 4)
        if len(desc) >= 24:
            _, _, tool, _, _, options = struct.unpack_from("<6I", desc, 0)
            notes.append((_cstr(desc, 24 + tool), _cstr(desc, 24 + options)))
    return notes


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from("<I", data, at)[0]


def _cstr(data: bytes, at: int) -> str:
    end = data.find(b"\0", at)
    return data[at : end if end >= 0 else len(data)].decode("utf-8", errors="replace")
