"""The DSv4 KV-compressor kernel family as data (docs/kernels.md §1-§5).

A `KernelSpec` says *what* one kernel computes: which stages it runs, the window
and stream rule, the reduction, rope, quantisation and the byte layout it stores.
It says nothing about threads or vectors; that is the schedule, which passes derive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from compressc.specs.errors import SpecError
from compressc.specs.formats import FORMATS, CacheFormat, formats_for

KERNELS = ("c4a", "c128a_compress", "c128a_store", "indexer_fp8", "indexer_mxfp4", "c128a_online", "csa",
           "c128a_split")
WEIGHT_DTYPES = ("bf16", "f32")
STORE_LAYOUTS = ("f32_rows", *FORMATS)
# where a pooling kernel finds its window: the paged state (docs/kernels.md §3.2) or, for the
# C128 compress kernel only, this launch's rows plus one ring per request (docs/kernels.md §10)
STATE_LAYOUTS = ("paged", "ring")
RING_KERNELS = ("c128a_compress",)
# the kernels with a checked build (KernelSpec.bounds, paged state); csa, the ring and the online
# merge are checked on the host (compressc.runtime.bounds)
CHECKED_KERNELS = ("c4a", "c128a_compress", "c128a_store", "indexer_fp8", "indexer_mxfp4")


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """Where one compressed token's bytes go inside a cache page (docs/kernels.md §4).

    The value region holds `token_stride` bytes per token from the page start; the
    scale region starts at `block_size * token_stride` and holds `scale_dim` bytes
    per token. Unused scale bytes are written as `pad_byte`.
    """

    name: str
    token_stride: int
    scale_dim: int
    pad_byte: int = 0


@dataclass(frozen=True, slots=True)
class KernelSpec:
    """One kernel of the family, fully determined by its fields.

    kernel: which member (see KERNELS); head: channels per compressed token;
    rope: trailing channels rotated by GPT-J pairs; quant_block: channels sharing
    one scale; ratio: tokens per compressed token; weight_dtype: RMSNorm gamma dtype;
    cache_format: the bytes it writes (compressc.specs.formats; "" for c128a_compress's
    fp32 rows); rotate: the indexer's 128-point Hadamard before quantisation; bounds:
    the checked build (COMPRESSC_CHECK_BOUNDS=kernel, docs/kernels.md §3, "Checked builds"): every index an
    active row uses is checked in the kernel, a bad row is skipped and recorded.
    indexer: for "csa" (a C4A and an indexer compressor in one launch, docs/kernels.md §12) the
    indexer kernel, whose format and rotation it writes (head, quant block and the rest are the C4A's).
    """

    kernel: str
    head: int
    rope: int
    quant_block: int
    ratio: int
    weight_dtype: str = "bf16"
    cache_format: str = ""
    rotate: bool = False
    store: StoreLayout | None = None
    scale_floor: float = 1e-4
    fp8_max: float = 448.0
    state_layout: str = "paged"
    bounds: bool = False
    indexer: str = ""

    VECTOR_BYTES: ClassVar[int] = 16

    # -- derived quantities (docs/kernels.md §1) ------------------------------------------
    @property
    def overlap(self) -> bool:
        return self.ratio == 4

    @property
    def window(self) -> int:
        return (1 + int(self.overlap)) * self.ratio

    @property
    def state_width(self) -> int:
        return self.head * (1 + int(self.overlap))

    @property
    def nope(self) -> int:
        return self.head - self.rope

    @property
    def pools(self) -> bool:
        return self.kernel != "c128a_store"

    @property
    def normalises(self) -> bool:
        return self.kernel not in ("c128a_compress", "c128a_online")

    @property
    def segmented(self) -> bool:
        """The online C128 merge (docs/kernels.md §9): one CTA per segment of rows, no paged state."""
        return self.kernel == "c128a_online"

    @property
    def format(self) -> CacheFormat | None:
        return FORMATS.get(self.cache_format)

    @property
    def variant(self) -> str:
        """Short name used in entry points and cache listings; a format other than the
        kernel's first, and the rotation, are suffixes (`..._full_bf16`, `..._rot`)."""
        tail = f"h{self.head}_q{self.quant_block}_r{self.rope}_{self.weight_dtype}"
        fmt = self.format
        suffix = f"_{fmt.suffix}" if fmt is not None and fmt.suffix else ""
        layout = "" if self.state_layout == "paged" else f"_{self.state_layout}"
        # csa: the indexer part after the main format (csa_..._bf16_full_fp8_idxmxfp4_rot)
        indexer = f"_idx{self.indexer.removeprefix('indexer_')}" if self.indexer else ""
        checked = "_bounds" if self.bounds else ""
        return f"{self.kernel}{layout}_{tail}{suffix}{indexer}{'_rot' if self.rotate else ''}{checked}"

    def with_(self, **changes: object) -> KernelSpec:
        return replace(self, **changes)


def make_spec(
    kernel: str,
    head: int | None = None,
    quant_block: int | None = None,
    *,
    rope: int = 64,
    weight_dtype: str = "bf16",
    cache_format: str | None = None,
    rotate: bool = False,
    state_layout: str = "paged",
    bounds: bool = False,
    indexer: str | None = None,
) -> KernelSpec:
    """Build and validate the spec of `kernel` for one (head, quant_block, format) variant;
    `cache_format` None is the kernel's first format (compressc.specs.formats)."""
    if kernel not in KERNELS:
        raise SpecError("kernel", kernel, f"must be one of {', '.join(KERNELS)}")
    defaults = _DEFAULTS[kernel]
    head = defaults["head"] if head is None else head
    if quant_block is None:
        # the fp8 indexer has one scale per token: its quant block is the whole head
        quant_block = head if defaults["quant_block"] == 0 else defaults["quant_block"]
    if cache_format is None:
        cache_format = (formats_for(kernel) or [""])[0]
    spec = KernelSpec(
        kernel=kernel,
        head=head,
        rope=rope,
        quant_block=quant_block,
        ratio=defaults["ratio"],
        weight_dtype=weight_dtype,
        cache_format=cache_format,
        rotate=rotate,
        state_layout=state_layout,
        bounds=bounds,
        indexer=(indexer or "indexer_fp8") if kernel == "csa" else (indexer or ""),
    )
    spec = spec.with_(store=_store_for(spec))
    validate(spec)
    return spec


# quant_block 0: the head (one scale per token)
_DEFAULTS: dict[str, dict] = {
    "c4a": {"head": 512, "quant_block": 64, "ratio": 4},
    "c128a_compress": {"head": 512, "quant_block": 64, "ratio": 128},
    "c128a_store": {"head": 512, "quant_block": 64, "ratio": 128},
    "indexer_fp8": {"head": 128, "quant_block": 0, "ratio": 4},
    "indexer_mxfp4": {"head": 128, "quant_block": 32, "ratio": 4},
    "c128a_online": {"head": 512, "quant_block": 64, "ratio": 128},
    "csa": {"head": 512, "quant_block": 64, "ratio": 4},
    # C128A in one launch for few active rows (docs/kernels.md §13): S CTAs pool one window
    "c128a_split": {"head": 512, "quant_block": 64, "ratio": 128},
}


def _store_for(spec: KernelSpec) -> StoreLayout:
    fmt = spec.format
    if fmt is None:
        return StoreLayout("f32_rows", token_stride=4 * spec.head, scale_dim=0)
    qb = max(spec.quant_block, 1)
    rope = min(max(spec.rope, 0), spec.head)
    return StoreLayout(fmt.name, token_stride=fmt.token_bytes(spec.head, rope),
                       scale_dim=fmt.scale_bytes(spec.head, rope, qb))


def validate(spec: KernelSpec) -> None:
    """Raise SpecError naming the field, its value and the rule it breaks."""
    if spec.kernel == "csa":
        from compressc.specs.csa import validate_csa  # its parts are validated as kernels of their own

        validate_csa(spec)
        return
    _check(not spec.indexer, "indexer", spec.indexer, "is only for the csa kernel (drop --indexer)")
    _check(spec.kernel in KERNELS, "kernel", spec.kernel, f"must be one of {', '.join(KERNELS)}")
    _check(spec.head > 0, "head_size", spec.head, "must be positive")
    _check(spec.quant_block > 0, "quant_block", spec.quant_block, "must be positive")
    _check(spec.weight_dtype in WEIGHT_DTYPES, "weight_dtype", spec.weight_dtype,
           f"must be one of {', '.join(WEIGHT_DTYPES)}")
    _check_format(spec)
    _check(spec.state_layout in STATE_LAYOUTS, "state_layout", spec.state_layout,
           f"must be one of {', '.join(STATE_LAYOUTS)}")
    _check(spec.state_layout == "paged" or spec.kernel in RING_KERNELS, "state_layout", spec.state_layout,
           f"'ring' is a state layout of {', '.join(RING_KERNELS)} only (the ring holds C128 state rows; "
           f"{spec.kernel} reads the paged state)")
    _check_bounds(spec)
    _check(spec.ratio in (4, 128), "ratio", spec.ratio, "must be 4 (overlapping C4) or 128 (C128)")
    _check(spec.head % 8 == 0, "head_size", spec.head,
           "must be a multiple of 8 so every row is read with 16-byte fp32 and bf16 vectors")
    _check(spec.head % spec.quant_block == 0, "head_size", spec.head,
           f"must be a multiple of quant_block={spec.quant_block} (head_size % quant_block == 0)")
    if spec.kernel == "indexer_fp8":
        _check(spec.quant_block == spec.head, "quant_block", spec.quant_block,
               f"must equal head_size={spec.head}: the {spec.kernel} cache holds one fp32 scale per token "
               "(leave --quant-block out)")
    if spec.normalises:
        _check_rope(spec)
        _check_store(spec)


def _check_bounds(spec: KernelSpec) -> None:
    """A checked build (docs/kernels.md §3) exists for the paged kernels only."""
    layout = spec.state_layout
    what = spec.kernel if layout == "paged" else f"{spec.kernel} with the {layout} state"
    _check(not spec.bounds or (spec.state_layout == "paged" and not spec.segmented), "bounds", spec.bounds,
           f"{what} has no checked build: the kernel-side checks are for the paged kernels "
           f"({', '.join(CHECKED_KERNELS)}); COMPRESSC_CHECK_BOUNDS=1 (or =kernel) checks the ring's and "
           "the online merge's index values on the host before each launch")


def _check_format(spec: KernelSpec) -> None:
    allowed = formats_for(spec.kernel)
    if not allowed:
        _check(spec.cache_format == "", "cache_format", spec.cache_format,
               f"must be empty: {spec.kernel} writes fp32 rows, not a cache format")
        _check(not spec.rotate, "rotate", spec.rotate, f"must be off: {spec.kernel} does not quantise")
        return
    _check(spec.cache_format in allowed, "cache_format", spec.cache_format,
           f"must be one of {', '.join(allowed)} for {spec.kernel}")
    fmt = FORMATS[spec.cache_format]
    if fmt.heads:
        _check(spec.head in fmt.heads, "head_size", spec.head,
               f"must be {' or '.join(map(str, fmt.heads))} for the {fmt.name} cache ({fmt.doc})")
    if fmt.quant_block:
        _check(spec.quant_block == fmt.quant_block, "quant_block", spec.quant_block,
               f"must be {fmt.quant_block} for the {fmt.name} cache (leave --quant-block out)")
    if spec.rotate:
        _check(fmt.rotatable, "rotate", spec.rotate,
               f"is only for the indexer caches; {fmt.name} is never rotated (drop --rotate)")
        _check(spec.head & (spec.head - 1) == 0, "head_size", spec.head,
               "must be a power of two for the Hadamard rotation (--rotate)")


def _check_rope(spec: KernelSpec) -> None:
    _check(spec.rope % 2 == 0, "rope", spec.rope, "must be even (GPT-J rotates pairs)")
    inside = f"must lie inside the head (0 < rope < head_size={spec.head})"
    _check(0 < spec.rope < spec.head, "rope", spec.rope, inside)
    vectors = "must be a multiple of 8 so rope bf16 stores are 16-byte vectors"
    _check(spec.rope % 8 == 0, "rope", spec.rope, vectors)
    if spec.format is not None and spec.format.name == "fp8_ds_mla":
        _check(spec.nope % spec.quant_block == 0, "quant_block", spec.quant_block,
               f"must divide the nope width head_size - rope = {spec.nope}")


def _check_store(spec: KernelSpec) -> None:
    store = spec.store
    if store is None:
        raise SpecError("store", None, "must be set (use make_spec)")
    fmt = spec.format
    assert fmt is not None
    need_stride = fmt.token_bytes(spec.head, spec.rope)
    need_scales = fmt.scale_bytes(spec.head, spec.rope, spec.quant_block)
    _check(store.token_stride >= need_stride, "store.token_stride", store.token_stride,
           f"must hold the {need_stride} value bytes of a {fmt.name} token")
    _check(store.scale_dim >= need_scales, "store.scale_dim", store.scale_dim,
           f"must hold {need_scales} bytes of scales and pad")
    _check(store.token_stride % 16 == 0, "store.token_stride", store.token_stride,
           "must be a multiple of 16 bytes (every vector store is 16-byte aligned)")


def _check(ok: bool, field: str, value: object, rule: str) -> None:
    if not ok:
        raise SpecError(field, value, rule)
