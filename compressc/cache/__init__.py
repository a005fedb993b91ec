"""The content-addressed store: entries, manifests, integrity checks, locks, repair, `cache why`.

The key a store is addressed by is the driver's (compressc/driver/key.py); kernel packs are
store-shaped directories inside wheels (compressc/packs/). Importing this package never imports
cutlass or cuda-python, so the runtime reads stores and manifests on a machine without the
build toolchain.
"""

import importlib
from typing import Any

# Names are imported on first use (PEP 562): the runtime's pack lookup needs only the
# store, and importing the rest would cost it milliseconds of a cold start.
_HOME = {
    "KNOWN_ARCHS": "arch",
    "arch_to_cc": "arch",
    "normalize_arch": "arch",
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
    "CorruptEntryError",
    "Entry",
    "ReadOnlyStoreError",
    "Store",
    "StoreError",
    "arch_to_cc",
    "make_manifest",
    "normalize_arch",
    "validate_manifest",
]
