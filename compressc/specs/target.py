"""The GPU targets a schedule is made for, as records instead of module constants.

Both shipped targets (sm_90a: H100/H200; sm_100a: B200) share every limit the passes use,
so a schedule is target-neutral today and the passes read `DEFAULT_TARGET`; the record is
the one place a target with other limits would change them. Facts from the CUDA
programming guide's compute-capability tables.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    arch: str
    warp: int = 32
    max_threads: int = 1024  # threads a CTA may have
    sm_threads: int = 2048  # threads resident on one SM
    sm_ctas: int = 32  # CTAs resident on one SM
    static_smem: int = 48 * 1024  # shared memory a CTA gets without the opt-in attribute
    max_smem: int = 227 * 1024  # with cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)
    cluster_sizes: tuple[int, ...] = (1, 2, 4, 8)  # portable cluster sizes (no opt-in)
    hw_e2m1: bool = False  # cvt.rn.satfinite.e2m1x2.f32 exists (ptxas refuses it for sm_90a)


TARGETS = {"sm_90a": Target("sm_90a"), "sm_100a": Target("sm_100a", hw_e2m1=True)}
DEFAULT_TARGET = TARGETS["sm_90a"]
WARP = DEFAULT_TARGET.warp
