"""Cache keys, the content-addressed store, the AOT compile driver and the cubin reader.

Importing this package never imports cutlass or cuda-python: the compile driver
imports them inside its functions, so the runtime can read stores and manifests on a
machine without the build toolchain.
"""

from compressc.cache.arch import KNOWN_ARCHS, arch_to_cc, normalize_arch
from compressc.cache.compile import (
    Artifacts,
    CompileError,
    Resources,
    ToolchainError,
    build_options,
    compile_many,
    compile_source,
    toolchain,
    toolchain_fingerprint,
)
from compressc.cache.cubin import CubinError, CubinInfo, check_cubin, read_cubin
from compressc.cache.key import cache_key, key_ingredients, source_fingerprint
from compressc.cache.manifest import make_manifest, validate_manifest
from compressc.cache.store import CorruptEntryError, Entry, ReadOnlyStoreError, Store, StoreError

__all__ = [
    "KNOWN_ARCHS",
    "Artifacts",
    "CompileError",
    "CorruptEntryError",
    "CubinError",
    "CubinInfo",
    "Entry",
    "ReadOnlyStoreError",
    "Resources",
    "Store",
    "StoreError",
    "ToolchainError",
    "arch_to_cc",
    "build_options",
    "cache_key",
    "check_cubin",
    "compile_many",
    "compile_source",
    "key_ingredients",
    "make_manifest",
    "normalize_arch",
    "read_cubin",
    "source_fingerprint",
    "toolchain",
    "toolchain_fingerprint",
    "validate_manifest",
]
