"""The variants `compressc build` ships by default (docs/kernels.md §1 rows, every confirmed
cache format of docs/kernels.md §8)."""

from __future__ import annotations

from compressc.specs.family import KernelSpec, make_spec

# (kernel, head_size, quant_block, cache formats, rotations); each is built for both RMSNorm
# weight dtypes. The indexer ships unrotated (merged vLLM) and rotated (SGLang, TRT-LLM,
# vLLM PR #55459).
DEFAULT_MATRIX: tuple[tuple[str, int, int, tuple[str, ...], tuple[bool, ...]], ...] = (
    ("c4a", 512, 64, ("fp8_ds_mla", "full_bf16", "full_fp8"), (False,)),
    ("c128a_compress", 512, 64, ("",), (False,)),
    ("c128a_store", 512, 64, ("fp8_ds_mla", "full_bf16", "full_fp8"), (False,)),
    ("indexer_fp8", 128, 128, ("indexer_fp8",), (False, True)),
    ("indexer_mxfp4", 128, 32, ("indexer_mxfp4",), (False, True)),
    ("c128a_online", 512, 64, ("",), (False,)),
    # C128A in one launch at small T (docs/kernels.md §13): the packed cache only, for now
    ("c128a_split", 512, 64, ("fp8_ds_mla",), (False,)),
)
# "csa" (docs/kernels.md §12): every main format x indexer x rotation, both weight dtypes
# (compressc.specs.csa.csa_specs), after the rows above
# kernels also shipped with another state layout (docs/kernels.md §10: the C128 ring)
EXTRA_STATE_LAYOUTS: dict[str, tuple[str, ...]] = {"c128a_compress": ("ring",)}


def default_specs() -> list[KernelSpec]:
    """Every default variant; c128a_compress and c128a_online have no weight: they appear once
    (c128a_compress once per state layout)."""
    specs = []
    for kernel, head, quant_block, formats, rotations in DEFAULT_MATRIX:
        dtypes = ("f32",) if kernel in ("c128a_compress", "c128a_online") else ("bf16", "f32")
        specs += [make_spec(kernel, head, quant_block, weight_dtype=d, cache_format=f or None, rotate=r)
                  for f in formats for r in rotations for d in dtypes]
        for layout in EXTRA_STATE_LAYOUTS.get(kernel, ()):
            specs += [make_spec(kernel, head, quant_block, weight_dtype=d, state_layout=layout)
                      for d in dtypes]
    from compressc.specs.csa import csa_specs

    return specs + csa_specs()
