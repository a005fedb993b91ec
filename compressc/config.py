"""Every COMPRESSC_* environment variable, read once at the command-line boundary.

Nothing below the CLI reads the environment: the CLI builds one `Config` and passes
its fields down. `ENV_TABLE` is the one description of the variables: `--help`,
`compressc show-config` and the README's table are written from it (a test keeps the
README in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# (name, default, meaning)
ENV_TABLE: tuple[tuple[str, str, str], ...] = (
    (
        "COMPRESSC_CACHE_DIR",
        "$XDG_CACHE_HOME/compressc, else ~/.cache/compressc",
        "the kernel cache: build writes it, the runtime reads it",
    ),
    (
        "COMPRESSC_NO_JIT",
        "unset (JIT allowed)",
        "1/true/yes/on: the runtime never compiles (a missing kernel is an error)",
    ),
    ("COMPRESSC_JOBS", "the number of CPU cores", "compile processes of build, wheel and tune --prepare"),
    (
        "COMPRESSC_SCHEDULES_DIR",
        "build/kernels-schedules",
        "tests/gpu only: the non-default schedules test_schedules_gpu.py loads",
    ),
)
ENV_VARS = ("COMPRESSC_CACHE_DIR", "COMPRESSC_NO_JIT", "COMPRESSC_JOBS")  # the ones Config reads
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class ConfigError(ValueError):
    """An environment variable holds a value compressc cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Config:
    cache_dir: Path
    no_jit: bool = False
    jobs: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read every COMPRESSC_* variable from `environ` (os.environ by default)."""
        cache = environ.get("COMPRESSC_CACHE_DIR")
        return cls(
            cache_dir=Path(cache).expanduser() if cache else default_cache_dir(environ),
            no_jit=_parse_bool("COMPRESSC_NO_JIT", environ.get("COMPRESSC_NO_JIT", "")),
            jobs=_parse_jobs(environ.get("COMPRESSC_JOBS", "")),
        )


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The user cache when COMPRESSC_CACHE_DIR is unset: $XDG_CACHE_HOME/compressc, else
    ~/.cache/compressc."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "compressc"
    return Path("~/.cache/compressc").expanduser()


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
