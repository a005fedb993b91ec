"""Every COMPRESSC_* environment variable, read once at the command-line boundary.

Nothing below the CLI reads the environment: the CLI builds one `Config` and passes
its fields down. `ENV_TABLE` is the one description of the variables: `--help`,
`compressc show-config` and the README's table are written from it (a test keeps the
README in step).

The default cache is $XDG_CACHE_HOME/compressc, else $HOME/.cache/compressc, else the
passwd entry's home. A process with none of them (HOME='' or unset and a uid without a
home, as in `docker run -u 1234`) gets <tmp>/compressc-cache-<uid>, created 0700 and
refused unless this uid owns it: a cache that other users can write could serve their
cubins. An empty variable counts as unset (HOME='' must not mean /.cache).
"""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

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
    ("COMPRESSC_LOCK_TIMEOUT", "600", "seconds to wait for another process building the same kernel; "
     "the error names the holder's pid"),
    ("COMPRESSC_CHECK_BOUNDS", "unset", "1: check every index value the kernels use before a launch, naming "
     "tensor, row and value (one device sync per call; not during CUDA graph capture); kernel: serve the "
     "checked builds, which skip and record an out-of-range row on the GPU (graph safe; raised after each "
     "eager call, or by compressc.runtime.check_kernel_bounds())"),
    ("COMPRESSC_DEBUG_CHECKS", "unset", "1: the runtime's ops check every argument on every call and launch "
     "through the loader's own launch (default: once per argument signature, the prepared ctypes launch)"),
    ("COMPRESSC_VLLM", "1", "0: the vLLM plugin (compressc.integrations.vllm) patches nothing"),
    ("COMPRESSC_C128A_SPLIT_ROWS", "32", "compress_c128a runs the one-launch c128a_split kernel for T at "
     "or below this many launched rows, the two-kernel path above (0: never; for benchmarking)"),
    ("COMPRESSC_CSA_FUSED_MAX_T", "1024", "compress_csa runs the fused kernel for T at or below this many "
     "rows, the two parts' own kernels above (read at import; for benchmarking)"),
    (
        "COMPRESSC_SCHEDULES_DIR",
        "build/kernels-schedules",
        "tests/gpu only: the non-default schedules test_schedules_gpu.py loads",
    ),
    ("COMPRESSC_TEST_VLLM_SOURCE", "unset",
     "tests only: a vLLM wheel or directory the live interface tests read"),
)
ENV_VARS = (  # the ones Config reads
    "COMPRESSC_CACHE_DIR",
    "COMPRESSC_NO_JIT",
    "COMPRESSC_JOBS",
    "COMPRESSC_LOCK_TIMEOUT",
    "COMPRESSC_CHECK_BOUNDS",
    "COMPRESSC_DEBUG_CHECKS",
    "COMPRESSC_C128A_SPLIT_ROWS",
    "COMPRESSC_VLLM",
)
DEFAULT_LOCK_TIMEOUT = 600.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class ConfigError(ValueError):
    """An environment variable holds a value compressc cannot use; the message names it."""


# A NamedTuple, not a dataclass: as immutable, and 0.05 ms to define instead of 0.4 ms, on the
# runtime's cold-start path (benchmarks/NOTES.md, session 8).
class Config(NamedTuple):
    cache_dir: Path
    no_jit: bool = False
    jobs: int = 1
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    check_bounds: bool = False
    bounds_in_kernel: bool = False  # COMPRESSC_CHECK_BOUNDS=kernel (check_bounds is set too)
    debug_checks: bool = False
    vllm_plugin: bool = True
    c128a_split_rows: int | None = None  # COMPRESSC_C128A_SPLIT_ROWS; None: the runtime's default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """Read every COMPRESSC_* variable from `environ` (os.environ by default)."""
        cache = environ.get("COMPRESSC_CACHE_DIR")
        bounds = environ.get("COMPRESSC_CHECK_BOUNDS", "")
        in_kernel = bounds.strip().lower() == "kernel"
        return cls(
            cache_dir=Path(cache).expanduser() if cache else default_cache_dir(environ),
            no_jit=_parse_bool("COMPRESSC_NO_JIT", environ.get("COMPRESSC_NO_JIT", "")),
            jobs=_parse_jobs(environ.get("COMPRESSC_JOBS", "")),
            lock_timeout=_parse_seconds("COMPRESSC_LOCK_TIMEOUT", environ.get("COMPRESSC_LOCK_TIMEOUT", "")),
            check_bounds=in_kernel or _parse_bool("COMPRESSC_CHECK_BOUNDS", bounds, "kernel"),
            bounds_in_kernel=in_kernel,
            debug_checks=_parse_bool("COMPRESSC_DEBUG_CHECKS", environ.get("COMPRESSC_DEBUG_CHECKS", "")),
            vllm_plugin=_parse_bool("COMPRESSC_VLLM", environ.get("COMPRESSC_VLLM", "1")),
            c128a_split_rows=_parse_rows(environ.get("COMPRESSC_C128A_SPLIT_ROWS", "")),
        )


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The user cache when COMPRESSC_CACHE_DIR is unset (the order is in the module docstring)."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "compressc"
    home = environ.get("HOME", "") or _passwd_home()
    if home and home != "/":
        return Path(home) / ".cache" / "compressc"
    return _private_temp_cache()


def _passwd_home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or ""
    except KeyError:  # a uid with no passwd entry
        return ""


def _private_temp_cache() -> Path:
    path = Path(tempfile.gettempdir()) / f"compressc-cache-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        owner = path.stat().st_uid
    except OSError as err:
        raise ConfigError(
            f"this process has no home directory (HOME is unset or empty) and {path} cannot be "
            f"created ({err.strerror}): set COMPRESSC_CACHE_DIR to a writable directory"
        ) from None
    if owner != os.getuid():
        raise ConfigError(
            f"this process has no home directory and {path} belongs to uid {owner}, not {os.getuid()}: "
            "set COMPRESSC_CACHE_DIR to a directory you own"
        )
    return path


def _parse_bool(name: str, raw: str, extra: str = "") -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    also = f" (or {extra})" if extra else ""
    raise ConfigError(
        f"{name}={raw!r} is not a boolean: use one of {', '.join(_TRUE)} or {', '.join(_FALSE[1:])}{also}"
    )


def _parse_rows(raw: str) -> int | None:
    if not raw.strip():
        return None
    if not raw.strip().isdigit():
        raise ConfigError(f"COMPRESSC_C128A_SPLIT_ROWS={raw!r} is not a non-negative integer (launched rows)")
    return int(raw)


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


def _parse_seconds(name: str, raw: str) -> float:
    if not raw.strip():
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name}={raw!r} is not a positive number of seconds")
    return seconds
