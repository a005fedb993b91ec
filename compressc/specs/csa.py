"""The CSA layer's two compressors as one kernel (docs/kernels.md §12).

A DeepSeek-V4 ratio-4 (CSA) layer compresses the same tokens twice: the main KV (a `c4a`,
head 512, in one of its cache formats) and the indexer (`indexer_fp8` or `indexer_mxfp4`,
head 128, unrotated or rotated). The `csa` kernel runs both in one launch. Its spec is the
main part's (head, quant block, rope, weight dtype, cache format) plus the indexer kernel and
its rotation; `parts(spec)` gives the two specs it fuses, each an ordinary family member.

The ABI: the two parts' parameters, each prefixed with its part's name (`main_state_cache`,
`indexer_k_cache`, ...), except the metadata both calls share in vLLM: the tokens' request
rows and positions, and the launched row count. Block tables, block sizes, slot mappings and
page strides stay per part: the two state caches and the two compressed caches are separate
tensors with their own pages (docs/kernels.md §12).
"""

from __future__ import annotations

from compressc.specs.abi import Param, abi
from compressc.specs.errors import SpecError
from compressc.specs.family import KernelSpec, make_spec
from compressc.specs.formats import formats_for

INDEXERS = ("indexer_fp8", "indexer_mxfp4")
PART_NAMES = ("main", "indexer")
# the arguments each part of the fused op takes, prefixed main_ / indexer_ (the single op's own)
PART_ARGS = (
    "state_cache",
    "slot_mapping",
    "block_table",
    "block_size",
    "rms_norm_weight",
    "rms_norm_eps",
    "cos_sin_cache",
    "k_cache",
    "kv_slot_mapping",
    "kv_cache_block_size",
)
# parameters of both parts that are one fused parameter (the same tensor in both vLLM calls)
SHARED = ("token_to_req_indices", "positions", "num_rows", "num_positions")


def parts(spec: KernelSpec) -> tuple[KernelSpec, KernelSpec]:
    """(main c4a spec, indexer spec) of a csa spec."""
    main = make_spec(
        "c4a",
        spec.head,
        spec.quant_block,
        rope=spec.rope,
        weight_dtype=spec.weight_dtype,
        cache_format=spec.cache_format,
    )
    indexer = make_spec(spec.indexer, rope=spec.rope, weight_dtype=spec.weight_dtype, rotate=spec.rotate)
    return main, indexer


def bound_name(part: str, param: str) -> str:
    """The fused parameter that part `part`'s parameter `param` receives."""
    return param if param in SHARED else f"{part}_{param}"


def csa_abi(spec: KernelSpec) -> tuple[Param, ...]:
    """The fused kernel's parameters: every part parameter once, in part order (pointers first,
    then scalars, as every kernel of the family declares them)."""
    seen: dict[str, Param] = {}
    for name, part in zip(PART_NAMES, parts(spec), strict=True):
        for p in abi(part):
            seen.setdefault(
                bound_name(name, p.name), Param(bound_name(name, p.name), p.kind, p.dtype, p.align)
            )
    params = list(seen.values())
    return tuple([p for p in params if p.kind == "ptr"] + [p for p in params if p.kind != "ptr"])


def validate_csa(spec: KernelSpec) -> None:
    """SpecError naming the field: the indexer kernel, and each part's own rules."""
    if spec.indexer not in INDEXERS:
        raise SpecError("indexer", spec.indexer, f"must be one of {', '.join(INDEXERS)} for csa")
    if spec.cache_format not in formats_for("c4a"):
        raise SpecError(
            "cache_format",
            spec.cache_format,
            f"must be one of {', '.join(formats_for('c4a'))} for csa (its main part is a c4a)",
        )
    if spec.ratio != 4 or spec.state_layout != "paged":
        raise SpecError("ratio", spec.ratio, "must be 4 with the paged state: csa fuses ratio-4 compressors")
    if spec.bounds:
        raise SpecError("bounds", spec.bounds, "csa has no checked build: COMPRESSC_CHECK_BOUNDS=1 "
                        "(or =kernel) checks its index values on the host before the launch")
    parts(spec)  # make_spec validates each part as the kernel it is


# What the default matrix ships (docs/kernels.md §12): the pairs an engine running merged vLLM's
# layers meets, unrotated (merged vLLM never rotates), bf16 weights: every main format with the
# fp8 indexer (vLLM's default, and the only indexer cache vLLM builds for sm_90), and the packed
# main cache with the MXFP4 indexer. A fused entry is ~47 KB in a wheel (both bodies, cubin and
# PTX): these 4 keep the sm_90 pack under 1 MB (6 pairs: 1,001,940 bytes). Every other pair
# (full caches with MXFP4, rotated, f32 weights) builds on request: `compressc build --spec csa`
# with its options, or the runtime's JIT.
SHIPPED_PAIRS = (
    ("fp8_ds_mla", "indexer_fp8"),
    ("full_bf16", "indexer_fp8"),
    ("full_fp8", "indexer_fp8"),
    ("fp8_ds_mla", "indexer_mxfp4"),
)


def csa_specs(
    pairs: tuple[tuple[str, str], ...] = SHIPPED_PAIRS,
    weight_dtypes: tuple[str, ...] = ("bf16",),
    rotations: tuple[bool, ...] = (False,),
) -> list[KernelSpec]:
    """The fused variants of (main format, indexer kernel) `pairs` at `rotations` and `weight_dtypes`."""
    return [
        make_spec("csa", 512, 64, weight_dtype=d, cache_format=f, indexer=i, rotate=r)
        for f, i in pairs
        for r in rotations
        for d in weight_dtypes
    ]


def all_pairs() -> tuple[tuple[str, str], ...]:
    """Every (main format, indexer kernel) pair the csa kernel accepts."""
    return tuple((f, i) for f in formats_for("c4a") for i in INDEXERS)
