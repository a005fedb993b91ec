"""GPU architecture names: one canonical spelling per target.

Hopper and Blackwell kernels are built for the architecture-specific targets
(`sm_90a`, `sm_100a`): a bare "90" or "sm100" means that target. Other targets are
accepted exactly as written (with or without the `sm_` prefix and underscore).
"""

from __future__ import annotations

import re

# Spellings of a bare SM number that resolve to its architecture-specific target.
_DEFAULT_SUFFIX = {"90": "a", "100": "a"}
KNOWN_ARCHS = ("sm_80", "sm_90a", "sm_100a", "sm_100f", "sm_103a", "sm_120a")
_SPELLING = re.compile(r"^(?:sm_?)?(\d{2,3})([af]?)$")


def normalize_arch(arch: str) -> str:
    """The canonical name: sm90, sm_90, 90a, 90 -> sm_90a; sm100, 100a -> sm_100a; others as given."""
    match = _SPELLING.match(arch.strip().lower()) if isinstance(arch, str) else None
    if match is None:
        raise ValueError(_unknown(arch))
    number, suffix = match.groups()
    name = f"sm_{number}{suffix or _DEFAULT_SUFFIX.get(number, '')}"
    if name not in KNOWN_ARCHS:
        raise ValueError(_unknown(arch))
    return name


def arch_to_cc(arch: str) -> tuple[int, int]:
    """The compute capability of `arch`: "sm_90a" -> (9, 0), "sm_103a" -> (10, 3)."""
    number = int(_SPELLING.match(normalize_arch(arch)).group(1))
    return number // 10, number % 10


def sm_number(arch: str) -> int:
    """The SM number of `arch`: "sm_90a" -> 90."""
    major, minor = arch_to_cc(arch)
    return 10 * major + minor


def _unknown(arch: object) -> str:
    return (
        f"unknown GPU architecture {arch!r}: accepted spellings are {', '.join(KNOWN_ARCHS)} "
        "(the 'sm_' prefix and underscore are optional; 90 and 100 mean sm_90a and sm_100a)"
    )
