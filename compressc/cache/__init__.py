"""Cache keys, the content-addressed store, the AOT compile driver and the cubin reader.

Importing this package never imports cutlass or cuda-python: the compile driver
imports them inside its functions, so the runtime can read stores and manifests on a
machine without the build toolchain.
"""

import importlib
from typing import Any

# Names are imported on first use (PEP 562): the runtime's pack lookup needs only the
# store, and importing the compile driver and cubin reader would cost it milliseconds
# of a cold start.
_HOME = {
    "KNOWN_ARCHS": "arch",
    "arch_to_cc": "arch",
    "normalize_arch": "arch",
    "Artifacts": "compile",
    "CompileError": "compile",
    "Resources": "compile",
    "ToolchainError": "compile",
    "build_options": "compile",
    "compile_many": "compile",
    "compile_source": "compile",
    "toolchain": "compile",
    "toolchain_fingerprint": "compile",
    "CubinError": "cubin",
    "CubinInfo": "cubin",
    "check_cubin": "cubin",
    "read_cubin": "cubin",
    "cache_key": "key",
    "key_ingredients": "key",
    "source_fingerprint": "key",
    "make_manifest": "manifest",
    "validate_manifest": "manifest",
    "CorruptEntryError": "store",
    "Entry": "store",
    "ReadOnlyStoreError": "store",
    "Store": "store",
    "StoreError": "store",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'compressc.cache' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compressc.cache.{home}"), name)


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
