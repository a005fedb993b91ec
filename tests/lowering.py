"""Shared by the kernel-dialect tests: lower a spec through a pipeline, and edit its text."""

from __future__ import annotations

from compressc.ir.from_spec import module_from_spec
from compressc.ir.parser import parse_module
from compressc.ir.printer import print_module
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline


def lower(spec, pipeline: str = "default"):
    """The spec's module after `pipeline` (a name such as "default", or pass text)."""
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


def edit(module, old: str, new: str):
    """The module's text with its one occurrence of `old` replaced by `new`, parsed back."""
    text = print_module(module)
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return parse_module(text.replace(old, new))
