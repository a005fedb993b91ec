"""Shared test setup: import path, the derandomised hypothesis profile, cache sentinels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

# The package is used from the checkout (no install step); make `import compressc` work
# whichever directory pytest is started from.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

# CI runs the same examples every time (a derandomised profile); locally HYPOTHESIS_PROFILE=dev explores.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci")


@pytest.fixture
def sentinel() -> int:
    """Byte every cache is poisoned with before a launch (docs/kernels.md §6)."""
    return 0xA5
