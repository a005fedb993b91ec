"""Declarative specs of the KV-compressor family and the default variant matrix."""

from compressc.specs.errors import SpecError
from compressc.specs.family import KERNELS, KernelSpec, StoreLayout, make_spec, validate
from compressc.specs.matrix import DEFAULT_MATRIX, default_specs

__all__ = [
    "DEFAULT_MATRIX",
    "KERNELS",
    "KernelSpec",
    "SpecError",
    "StoreLayout",
    "default_specs",
    "make_spec",
    "validate",
]
