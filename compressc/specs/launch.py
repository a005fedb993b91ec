"""How a kernel is launched, as typed records: its grid rule and its launch facts.

`LaunchInfo` is derived once from the lowered module (`compressc.ir.launch.launch_info`),
emitted into the kernel's `@cute.jit` launch, written to the manifest, and parsed back
once when the runtime loads the kernel (`GridRule.parse`), never on a launch. Pure
standard library: the runtime reads it with CuTe DSL not installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressc.specs.abi import CLUSTER_SIZES, Param

GRID_KINDS = ("rows", "runs", "wave")
STALE_TILED = (
    "the launch rule of tiled kernels built by an older compressc (at most 32 rows per CTA); "
    "today's tiled kernels say 'wave:<CTAs per SM>'. Rebuild them: compressc build --arch <arch>"
)


class GridRuleError(ValueError):
    """A grid rule the runtime cannot launch; the message names the rule and the fix."""


@dataclass(frozen=True, slots=True)
class GridRule:
    """Which CTAs a launch of T rows gets (`launch_grid`, below).

    kind "rows": one CTA per launched row; "runs": a CTA per run of at most `count`
    rows, unrolled; "wave": one wave of at most `count` CTAs per SM looping over their
    rows, in thread-block clusters of `cluster` CTAs when `cluster` > 1. `parts` > 1: the
    grid's y dimension, one row of CTAs per part of a fused kernel (docs/kernels.md §12),
    each as wide as the rule gives for T. `split` > 1 ("wave:N,split:S", c128a_split): the same
    grid as clusters of S, launched as plain CTAs (they merge through global memory).
    """

    kind: str
    count: int = 0
    cluster: int = 1
    parts: int = 1
    split: int = 1

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise GridRuleError(f"grid rule {self!r}: {problem}")

    def _problem(self) -> str | None:
        if self.kind not in GRID_KINDS:
            return f"kind must be one of {', '.join(GRID_KINDS)}"
        if (self.kind == "rows") != (self.count == 0) or self.count < 0:
            return "'rows' takes no count; 'runs' and 'wave' take a positive one"
        if self.cluster not in CLUSTER_SIZES or (self.cluster > 1 and self.kind != "wave"):
            return "a cluster of 2, 4 or 8 CTAs needs the 'wave' kind"
        if self.parts not in (1, 2) or (self.parts > 1 and self.cluster > 1):
            return "a fused kernel has 2 parts ('parts:2'), without clusters"
        if self.split not in CLUSTER_SIZES or (self.split > 1 and (self.kind != "wave" or self.cluster > 1)):
            return "a split of 2, 4 or 8 CTAs a row needs the 'wave' kind and no cluster"
        return None

    @property
    def ctas_per_row(self) -> int:
        """x-consecutive CTAs that share each row: a cluster's or a split's."""
        return max(self.cluster, self.split)

    def spelling(self) -> str:
        """The manifest's text: "rows", "runs:R", "wave:N" or "wave:N,cluster:S"; a fused
        kernel's adds ",parts:2"."""
        parts = f",parts:{self.parts}" if self.parts > 1 else ""
        if self.kind == "rows":
            return "rows" + parts
        suffix = f",cluster:{self.cluster}" if self.cluster > 1 else ""
        suffix += f",split:{self.split}" if self.split > 1 else ""
        return f"{self.kind}:{self.count}{suffix}{parts}"

    @classmethod
    def parse(cls, text: str) -> GridRule:
        """The inverse of `spelling`; GridRuleError naming the text otherwise."""
        problem = rule_problem(text)
        if problem is not None:
            raise GridRuleError(f"grid rule {text!r}: {problem}")
        text, parts = _parts(text)
        if text == "rows":
            return cls("rows", parts=parts)
        rule, _, suffix = text.partition(",")
        kind, _, count = rule.partition(":")
        name, _, size = suffix.partition(":")
        cluster = int(size) if name == "cluster" else 1
        return cls(kind, int(count), cluster, parts, int(size) if name == "split" else 1)


def _parts(text: str) -> tuple[str, int]:
    """(the rule without a ",parts:2" suffix, its parts: 1 without one)."""
    return (text[: -len(",parts:2")], 2) if text.endswith(",parts:2") else (text, 1)


def rule_problem(text: str) -> str | None:
    """What is wrong with a manifest's grid rule text, or None when it can be launched."""
    text, parts = _parts(text)
    if parts > 1 and ",cluster:" in text:
        return "a fused kernel's rule ',parts:2' takes no cluster"
    if text == "rows":
        return None
    rule, comma, suffix = text.partition(",")
    kind, _, count = rule.partition(":")
    if kind == "tiled":
        return STALE_TILED
    if comma:
        name, _, size = suffix.partition(":")
        sizes = [str(c) for c in CLUSTER_SIZES if c > 1]
        if kind != "wave" or name not in ("cluster", "split") or size not in sizes:
            return "a cluster suffix is ',cluster:<2|4|8>' (or ',split:<2|4|8>') after 'wave:<CTAs per SM>'"
    if kind not in ("wave", "runs") or not count.isdigit() or int(count) <= 0:
        return "expected 'rows', 'wave:<CTAs per SM>[,cluster:<S>]' or 'runs:<rows per CTA>'"
    return None


@dataclass(frozen=True, slots=True)
class LaunchInfo:
    """Everything a loader needs to launch one kernel besides its cubin.

    entry: the cubin's entry name; params: the C ABI (from the module's `cc.arg` ops);
    block: threads per CTA; grid: the grid rule; smem_dynamic: dynamic shared memory
    bytes (not recorded in the cubin); programmatic: launched with programmatic stream
    serialization (it waits for the grid it overlaps itself); min_ctas_per_sm: the
    occupancy ptxas was asked for (.minnctapersm), 0 when none.
    """

    entry: str
    params: tuple[Param, ...]
    block: tuple[int, int, int]
    grid: GridRule
    smem_dynamic: int = 0
    programmatic: bool = False
    min_ctas_per_sm: int = 0

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


def launch_grid(rule: GridRule, num_rows: int, sm_count: int, resident: int = 0,
                max_clusters: int = 0) -> int:
    """CTAs to launch for `num_rows` launched rows under a kernel's grid `rule`.

    "rows": one CTA per row. "wave:N" (a tiled kernel): one wave of at most N CTAs per SM, and no more
    than the `resident` CTAs an SM can hold of this kernel (its occupancy, 0 = unknown):
    a second wave would run the active rows one wave after another. Each CTA takes
    ceil(num_rows / grid) consecutive rows (the kernel derives its run from gridDim, so
    any grid up to num_rows is correct). "wave:N,cluster:S": the same in clusters of S
    CTAs, each cluster taking the rows a CTA would; one wave is the SMs' CTA slots / S,
    and at most `max_clusters` (the driver's count of co-resident clusters; 0 = unknown).
    "wave:N,split:S": as clusters of S, without the cluster launch.
    "runs:R": the kernel unrolls up to R rows per
    CTA, so the grid is at least ceil(num_rows / R); below that, one row per CTA while
    the SMs have room (`resident` CTAs each): at small T a CTA's rows would otherwise
    run one after another while SMs idle.
    """
    if num_rows <= 0:
        return 0
    kind, count, cluster = rule.kind, rule.count, rule.ctas_per_row
    if kind == "rows":
        return num_rows
    if kind == "runs":
        grid = min(num_rows, max(-(-num_rows // count), resident * sm_count))
    else:
        ctas = min(count, resident) if resident > 0 else count
        units = max(1, ctas * sm_count // cluster)
        if rule.cluster > 1 and max_clusters > 0:
            units = min(units, max_clusters)
        grid = min(num_rows, units)
    per_cta = -(-num_rows // grid)
    return -(-num_rows // per_cta) * cluster
