"""GPU tests: run on the device machine with `COMPRESSC_CACHE_DIR=<built kernels> pytest -m gpu tests/gpu`."""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run on the device machine)")


@pytest.fixture(scope="session")
def cuda_device() -> torch.device:
    """The current CUDA device; skips the test where there is none."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda", torch.cuda.current_device())
