"""The variants `compressc build` ships by default (docs/kernels.md §1 rows)."""

from __future__ import annotations

from compressc.specs.family import KernelSpec, make_spec

# (kernel, head_size, quant_block); each is built for both RMSNorm weight dtypes.
DEFAULT_MATRIX: tuple[tuple[str, int, int], ...] = (
    ("c4a", 512, 64),
    ("c128a_compress", 512, 64),
    ("c128a_store", 512, 64),
    ("indexer_fp8", 128, 128),
    ("c128a_online", 512, 64),
)


def default_specs() -> list[KernelSpec]:
    """Every default variant; c128a_compress and c128a_online have no weight: they appear once."""
    specs = []
    for kernel, head, quant_block in DEFAULT_MATRIX:
        dtypes = ("f32",) if kernel in ("c128a_compress", "c128a_online") else ("bf16", "f32")
        specs += [make_spec(kernel, head, quant_block, weight_dtype=d) for d in dtypes]
    return specs
