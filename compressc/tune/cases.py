"""The cases `compressc tune --measure` times: (scenario, launched rows T) per kernel family.

Most families are timed at prefill and decode x T_LIST (C128A decode stops at 4096: 16384
rows need 8.6 GB of state that make_scenario fills on the CPU, about 70 s). A family that
serves only a few rows has its own list (FAMILY_CASES): c128a_split is the one-launch C128A
of docs/kernels.md §13, meant for the few-active-rows cases of issue 16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# 1024: where a "runs" C4A kernel gives two rows per CTA and the baseline still fits one wave
T_LIST = (32, 512, 1024, 4096, 16384)
KINDS = ("prefill", "decode")
MAX_T = {("c128a", "decode"): 4096}
# c128a_split: decode T = 1 and 32 (every row active), a prefill chunk of 128 (1 active row) and
# of 512 (4 active rows); its workspace is 48 KiB a launched row, 24 MiB at T = 512
FAMILY_CASES = {"c128a_split": (("decode", 1), ("decode", 32), ("prefill", 128), ("prefill", 512))}


@dataclass(frozen=True)
class Case:
    kind: str
    T: int

    @property
    def label(self) -> str:
        return f"{self.kind[0]}{self.T}"


def cases_for(family: str, kinds: Sequence[str] = KINDS, t_list: Sequence[int] | None = None) -> list[Case]:
    """The cases of `family` in `kinds`: its own FAMILY_CASES unless `t_list` is given, else
    kinds x t_list (default T_LIST) up to the family's MAX_T."""
    if t_list is None and family in FAMILY_CASES:
        return [Case(k, t) for k, t in FAMILY_CASES[family] if k in kinds]
    return [Case(k, t) for k in kinds for t in t_list or T_LIST if t <= MAX_T.get((family, k), t)]
