"""Every COMPRESSC_* environment variable, read once at the command-line boundary.

Nothing below the CLI reads the environment: the CLI builds one `Config` and passes
its fields down (STYLE.md rule 6).

  COMPRESSC_CACHE_DIR  user cache root (default ~/.cache/compressc)
  COMPRESSC_NO_JIT     1/true/yes/on: never compile at run time, only load prebuilt kernels
  COMPRESSC_JOBS       parallel compile processes (default: the CPU count)
  COMPRESSC_DEBUG_CHECKS  1: the runtime's ops check every argument on every call and launch
                       through cuda-bindings (default: once per argument signature, ctypes launch)
  COMPRESSC_VLLM       0: the vLLM plugin (compressc.integrations.vllm) patches nothing (default 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VARS = ("COMPRESSC_CACHE_DIR", "COMPRESSC_NO_JIT", "COMPRESSC_JOBS", "COMPRESSC_DEBUG_CHECKS",
            "COMPRESSC_VLLM")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class ConfigError(ValueError):
    """An environment variable holds a value compressc cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Config:
    cache_dir: Path
    no_jit: bool = False
    jobs: int = 1
    debug_checks: bool = False
    vllm_plugin: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read every COMPRESSC_* variable from `environ` (os.environ by default)."""
        cache = environ.get("COMPRESSC_CACHE_DIR") or "~/.cache/compressc"
        return cls(
            cache_dir=Path(cache).expanduser(),
            no_jit=_parse_bool("COMPRESSC_NO_JIT", environ.get("COMPRESSC_NO_JIT", "")),
            jobs=_parse_jobs(environ.get("COMPRESSC_JOBS", "")),
            debug_checks=_parse_bool("COMPRESSC_DEBUG_CHECKS", environ.get("COMPRESSC_DEBUG_CHECKS", "")),
            vllm_plugin=_parse_bool("COMPRESSC_VLLM", environ.get("COMPRESSC_VLLM", "1")),
        )


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{name}={raw!r} is not a boolean: use one of {', '.join(_TRUE)} or {', '.join(_FALSE[1:])}"
    )


def _parse_jobs(raw: str) -> int:
    if not raw.strip():
        return os.cpu_count() or 1
    try:
        jobs = int(raw)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"COMPRESSC_JOBS={raw!r} is not a positive integer (number of compile processes)")
    return jobs
