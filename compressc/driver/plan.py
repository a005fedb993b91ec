"""The build plan: spec -> IR -> passes -> CuTe DSL source -> key, with no compiler.

`plan` does everything that needs no cutlass (IR, passes, emitted source, key), so
a second `compressc build` with nothing changed finds every key in the store and
never starts a compiler process (driver/build.py compiles what it lacks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compressc import __version__
from compressc.cache.arch import normalize_arch
from compressc.driver.key import canonical_json, hash_ingredients, key_ingredients, source_fingerprint
from compressc.ir.from_spec import module_from_spec
from compressc.ir.launch import launch_info
from compressc.ir.printer import print_module
from compressc.kernels.emitter import emit
from compressc.passes.manager import PassManager, parse_pipeline, pipeline_string, resolve_pipeline
from compressc.specs.family import KernelSpec
from compressc.specs.launch import LaunchInfo


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """Everything known about one kernel before the compiler runs."""

    spec: KernelSpec
    arch: str
    pipeline: str
    spec_ir: str
    lowered_ir: str
    source: str
    key: str
    launch: LaunchInfo  # of the lowered module: what the manifest records and the cubin must match
    ingredients: str = ""  # canonical JSON of the key ingredients: sha256(ingredients) == key
    serves: bool = True  # the default pipeline's build: what the runtime serves and the index names

    @property
    def label(self) -> str:
        return f"{self.spec.variant}@{self.arch}"


def plan(spec: KernelSpec, arch: str, pipeline: str = "default", *, fingerprint: str | None = None,
         toolchain: dict[str, str] | None = None) -> BuildPlan:
    """Lower, emit and key one (variant, arch); cheap and free of cutlass."""
    arch = normalize_arch(arch)
    module = module_from_spec(spec)
    passes = parse_pipeline(resolve_pipeline(pipeline, module, arch))  # "default": tuned for arch
    canonical = pipeline_string(passes)
    default = pipeline == "default" or canonical == pipeline_string(
        parse_pipeline(resolve_pipeline("default", module, arch))
    )
    spec_ir = print_module(module)
    ingredients = _ingredients(spec_ir, canonical, arch, fingerprint, toolchain)
    lowered = PassManager(passes).run(module)
    return BuildPlan(spec, arch, canonical, spec_ir, print_module(lowered), emit(lowered, canonical),
                     hash_ingredients(ingredients), launch_info(lowered),
                     canonical_json(ingredients).decode(), default)


def plan_ingredients(spec: KernelSpec, arch: str, pipeline: str = "default", *,
                     fingerprint: str | None = None, toolchain: dict[str, str] | None = None) -> dict:
    """The key ingredients of one (variant, arch, pipeline), without lowering (`compressc cache why`)."""
    arch = normalize_arch(arch)
    module = module_from_spec(spec)
    canonical = pipeline_string(parse_pipeline(resolve_pipeline(pipeline, module, arch)))
    return _ingredients(print_module(module), canonical, arch, fingerprint, toolchain)


def _ingredients(spec_ir: str, pipeline: str, arch: str, fingerprint: str | None,
                 toolchain: dict[str, str] | None) -> dict:
    from compressc.driver.compile import build_options, toolchain_fingerprint

    return key_ingredients(spec_ir, pipeline, arch, build_options(arch), compressc_version=__version__,
                           source_fingerprint=fingerprint or source_fingerprint(),
                           toolchain=toolchain or toolchain_fingerprint())


def plan_many(
    specs: Sequence[KernelSpec], archs: Sequence[str], pipeline: str = "default"
) -> list[BuildPlan]:
    from compressc.driver.compile import toolchain_fingerprint

    fingerprint, toolchain = source_fingerprint(), toolchain_fingerprint()
    return [plan(s, a, pipeline, fingerprint=fingerprint, toolchain=toolchain) for a in archs for s in specs]
