"""Passes that lower a spec-level module to a schedule, and the pass manager."""

from compressc.passes.base import ModulePass
from compressc.passes.manager import (
    ALL_PASSES,
    BASELINE_PIPELINE,
    DEFAULT_PIPELINE,
    PassManager,
    PipelineError,
    parse_pipeline,
    pipeline_string,
    resolve_pipeline,
)

__all__ = [
    "ALL_PASSES",
    "BASELINE_PIPELINE",
    "DEFAULT_PIPELINE",
    "ModulePass",
    "PassManager",
    "PipelineError",
    "parse_pipeline",
    "pipeline_string",
    "resolve_pipeline",
]
