"""The variants `compressc build` ships by default (docs/kernels.md §1 rows)."""

from __future__ import annotations

from compressc.specs.family import KernelSpec, make_spec

# (kernel, head_size, quant_block); each is built for both RMSNorm weight dtypes.
DEFAULT_MATRIX: tuple[tuple[str, int, int], ...] = (
    ("c4a", 512, 64),
    ("c128a_compress", 512, 64),
    ("c128a_store", 512, 64),
    ("indexer_fp8", 128, 128),
)
# kernels also shipped with another state layout (docs/kernels.md §8: the C128 ring)
EXTRA_STATE_LAYOUTS: dict[str, tuple[str, ...]] = {"c128a_compress": ("ring",)}


def default_specs() -> list[KernelSpec]:
    """Every default variant; c128a_compress has no weight, so it appears once (per state layout)."""
    specs = []
    for kernel, head, quant_block in DEFAULT_MATRIX:
        dtypes = ("f32",) if kernel == "c128a_compress" else ("bf16", "f32")
        specs += [make_spec(kernel, head, quant_block, weight_dtype=d) for d in dtypes]
        for layout in EXTRA_STATE_LAYOUTS.get(kernel, ()):
            specs += [make_spec(kernel, head, quant_block, weight_dtype=d, state_layout=layout)
                      for d in dtypes]
    return specs
