"""The compile driver: plan (spec -> IR -> passes -> source -> key), compile, cubin check, build.

    plan.py     BuildPlan and `plan`: lower, emit and key one (variant, arch); no cutlass
    key.py      the cache key's named ingredients and their hash
    compile.py  CuTe DSL -> PTX -> cubin (the only module besides generated kernels that
                imports cutlass, and only inside its functions)
    cubin.py    the cubin reader: entries, `.nv.info` parameters, the ABI check
    build.py    compile what the store lacks under the key's lock, check, publish

Importing this package imports none of them (PEP 562, as compressc.cache does).
"""

import importlib
from typing import Any

_HOME = {
    "BuildPlan": "plan",
    "plan": "plan",
    "plan_many": "plan",
    "build_plans": "build",
    "build_one": "build",
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
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'compressc.driver' has no attribute {name!r}")
    return getattr(importlib.import_module(f"compressc.driver.{home}"), name)


__all__ = sorted(_HOME)
