"""The read-ceiling probe reads what it says: every pattern's address map, checked on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.read_ceiling import CHUNK_VEC, PAGE_VEC, PATTERNS, buffer_bytes, kernel_source


def _addresses(pattern: str, n4: int, pages: int) -> np.ndarray:
    line = next(x.strip() for x in kernel_source(pattern).splitlines() if x.strip().startswith("at = "))
    i = np.arange(n4, dtype=np.int64)
    return eval(line.removeprefix("at = "), {"i": i, "pages": pages})  # noqa: S307 - our own template


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_each_pattern_reads_distinct_vectors_inside_its_buffer(pattern):
    read = 64 * PAGE_VEC * 16  # 64 pages' worth of bytes read
    size = buffer_bytes(pattern, read)
    at = _addresses(pattern, read // 16, size // (PAGE_VEC * 16))
    assert len(np.unique(at)) == len(at) and at.min() == 0 and at.max() < size // 16
    chunk = (at % PAGE_VEC) // CHUNK_VEC
    if pattern == "half-pages":
        assert size == 2 * read and np.all(chunk % 2 == 0)  # every other 2 KiB chunk of a page
    if pattern != "contiguous":
        # consecutive pages of the read stream are not consecutive in memory
        pages = at[:: PAGE_VEC // (2 if pattern == "half-pages" else 1)] // PAGE_VEC
        assert np.count_nonzero(np.diff(pages) == 1) < len(pages) // 4


def test_read_kernels_compile():
    pytest.importorskip("cutlass")
    from compressc.driver.compile import compile_source

    for pattern in PATTERNS:
        ptx = compile_source(kernel_source(pattern), "sm_90a").ptx
        assert ptx.count("ld.global.v4.b32") == 8  # eight 128-bit loads in flight a thread
