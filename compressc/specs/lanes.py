"""Which lane layouts of a head are legal: the rule the thread map derives from and the
runtime checks a requested variant against before any lookup or build.

A lane owns `elems` contiguous channels; lanes fill whole warps of 32. The verifier
checks a lowered module's fields against the same facts.
"""

from __future__ import annotations

from compressc.specs.family import KernelSpec
from compressc.specs.target import WARP

MAX_ELEMS_PER_LANE = 8  # 8 fp32 = two 128-bit loads per stream and row


def elems_fit(spec: KernelSpec, elems: int) -> bool:
    """Whether lanes of `elems` channels lay `spec`'s head out legally: the head fills whole
    warps, no lane straddles nope and rope, a rope lane rotates whole pairs, and a quant
    block is a power-of-two run of lanes inside one warp or a whole number of warps."""
    if spec.head % elems or (spec.head // elems) % WARP:
        return False
    if not spec.normalises:  # the C128 compress kernel pools and stores fp32 rows only
        return True
    if spec.nope % elems or elems % 2:
        return False
    lanes, rest = divmod(spec.quant_block, elems)
    return not rest and (lanes % WARP == 0 or (lanes & (lanes - 1) == 0 and lanes <= WARP))


def derive_elems(spec: KernelSpec) -> int:
    """The most channels per lane (at most 8) that lay the head out legally. Head 512
    takes 8 (64 lanes), the indexer's 128 takes 4 (one warp), 384 takes 4 (3 warps), 320
    takes 2 (5 warps). Raises ValueError naming the flag and the rule where none does."""
    for elems in (8, 4, 2, 1):
        if elems <= MAX_ELEMS_PER_LANE and elems_fit(spec, elems):
            return elems
    # whole warps of 32 lanes, each lane at least 1 channel (2 where it rotates rope pairs)
    unit, each = (64, "an even number (2, 4 or 8) of") if spec.normalises else (32, "1, 2, 4 or 8")
    raise ValueError(
        f"--head-size {spec.head} cannot be scheduled: its lanes must fill whole warps of 32 with "
        f"{each} channels each, so head_size must be a multiple of {unit}"
    )
