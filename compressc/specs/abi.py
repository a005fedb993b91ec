"""The C ABI of every kernel: raw pointers and scalars in declaration order.

CuTe DSL gives a kernel whose parameters are only pointers and Int32/Int64/Float32
scalars plain C parameters in this order (docs/architecture.md §3), so a loader with nothing but
cuda-python can launch it. Tensors are rebuilt inside the kernel from these.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressc.specs.family import KernelSpec
from compressc.specs.target import DEFAULT_TARGET

SCALAR_KINDS = ("i32", "i64", "f32")
POINTER_DTYPES = ("f32", "bf16", "i32", "i64", "u8")
CTYPE_SIZE = {"ptr": 8, "i32": 4, "i64": 8, "f32": 4}
# CTAs per thread-block cluster a kernel may be launched in (1: no cluster): powers of two up
# to 8, the largest cluster every sm_90+ part supports without opting in to a larger one
CLUSTER_SIZES = DEFAULT_TARGET.cluster_sizes


@dataclass(frozen=True, slots=True)
class Param:
    """One kernel parameter: `kind` is "ptr" or a scalar kind; `dtype` is the pointee."""

    name: str
    kind: str
    dtype: str = ""
    align: int = 0

    @property
    def size(self) -> int:
        return CTYPE_SIZE[self.kind]


# c128a_split (docs/kernels.md §13): row t of its workspace is fp32 words
# [t * row, (t + 1) * row), row = split_workspace_row(head): an arrival counter (u32, word 0;
# words 1-3 pad it to 16 bytes), then the (max, sum, weighted sum) partial of each of at most
# SPLIT_MAX CTAs, rank-major. Sized for SPLIT_MAX whatever the schedule's split, so the runtime
# allocates it without reading the schedule.
SPLIT_MAX = 8


def split_workspace_row(head: int) -> int:
    """fp32 words of one launched row's region of the c128a_split workspace."""
    return 4 + SPLIT_MAX * 3 * head


def _ptr(name: str, dtype: str, align: int) -> Param:
    return Param(name, "ptr", dtype, align)


_ROW_META = (
    _ptr("token_to_req_indices", "i32", 4),
    _ptr("positions", "i64", 8),
    _ptr("slot_mapping", "i64", 8),
)
_STATE = (_ptr("state_cache", "f32", 16),)
_SCALARS_ROWS = (Param("num_rows", "i32"), Param("num_positions", "i32"), Param("num_kv_slots", "i32"))
_SCALARS_STATE = (
    Param("block_table_stride", "i32"),
    Param("state_page_stride", "i64"),
    Param("state_block_shift", "i32"),
)
_SCALARS_STORE = (
    Param("rms_norm_eps", "f32"),
    Param("k_cache_page_stride", "i64"),
    Param("kv_block_shift", "i32"),
)


# the online C128 merge (docs/kernels.md §9.1): num_rows counts the segments, one CTA each (the
# rows of its launch grid); the strides are in fp32 elements
_ONLINE = (
    _ptr("kv", "f32", 16),
    _ptr("score", "f32", 16),
    _ptr("ape", "f32", 16),
    _ptr("positions", "i64", 8),
    _ptr("run_state", "f32", 16),
    _ptr("segments", "i32", 4),
    _ptr("compressed_kv", "f32", 16),
    Param("num_rows", "i32"),
    Param("kv_stride", "i32"),
    Param("score_stride", "i32"),
    Param("run_state_stride", "i32"),
)
# the ring compress kernel (docs/kernels.md §10): this launch's raw rows, the position table
# and query starts; the state is one ring block of `ring_capacity` rows per request
_RING_INPUTS = (
    _ptr("kv", "f32", 16),
    _ptr("score", "f32", 16),
    _ptr("ape", "f32", 16),
    _ptr("query_start_loc", "i32", 4),
)
_SCALARS_RING = (
    Param("block_table_stride", "i32"),
    Param("ring_block_stride", "i64"),
    Param("ring_capacity", "i32"),
    Param("kv_row_stride", "i64"),
    Param("score_row_stride", "i64"),
)


# a checked build's extra parameters (docs/kernels.md §3, "Checked builds"): the error record, then
# the extents
# of what its rows index (rows of block_table before its columns; pages of state and k_cache)
BOUNDS_RECORD = _ptr("bounds_error", "i64", 8)
# the record: 8 int64 words, word 0 = claimed (1) | check code << 32, then row, value, at, limit, aux
BOUNDS_CODES = {"request": 1, "column": 2, "page": 3, "rope": 4, "kv": 5}
BOUNDS_WORDS = 8
_BOUNDS_STATE = (Param("bounds_table_rows", "i32"), Param("bounds_table_cols", "i32"),
                 Param("bounds_state_pages", "i32"))
_BOUNDS_STORE = (Param("bounds_cos_sin_rows", "i32"), Param("bounds_kv_pages", "i32"))


def abi(spec: KernelSpec) -> tuple[Param, ...]:
    """The parameter list of `spec`'s entry point (a checked build's: the plain one's, then
    the bounds record and extents)."""
    if spec.kernel == "csa":  # both parts' parameters (compressc.specs.csa)
        from compressc.specs.csa import csa_abi

        return csa_abi(spec)
    if not spec.bounds:
        return _abi(spec)
    extents = (_BOUNDS_STATE if spec.pools else ()) + (_BOUNDS_STORE if spec.normalises else ())
    return _abi(spec) + (BOUNDS_RECORD,) + extents


def _abi(spec: KernelSpec) -> tuple[Param, ...]:
    if spec.kernel == "c128a_online":
        return _ONLINE
    weight = _ptr("rms_norm_weight", spec.weight_dtype, 16)
    kv_slots = _ptr("kv_slot_mapping", "i64", 8)
    block_table = _ptr("block_table", "i32", 4)
    store_ptrs = (weight, _ptr("cos_sin_cache", "f32", 16), _ptr("k_cache", "u8", 16))
    compressed = _ptr("compressed_kv", "f32", 16)
    if spec.kernel == "c128a_compress" and spec.state_layout == "ring":
        ptrs = _STATE + _ROW_META + (block_table, compressed, kv_slots) + _RING_INPUTS
        return ptrs + _SCALARS_ROWS + _SCALARS_RING
    if spec.kernel == "c128a_compress":
        ptrs = _STATE + _ROW_META + (block_table, compressed, kv_slots)
        return ptrs + _SCALARS_ROWS + _SCALARS_STATE
    fmt = spec.format
    # a format's device scalar (full fp8: fp8_scale[0]) and run-time token row stride
    scalar = (_ptr(fmt.scale_operand, "f32", 4),) if fmt is not None and fmt.scale_operand else ()
    rows = (Param("k_cache_token_stride", "i64"),) if fmt is not None and fmt.row_stride == "runtime" else ()
    if spec.kernel == "c128a_store":
        ptrs = (compressed,) + _ROW_META + store_ptrs + (kv_slots,) + scalar
        return ptrs + _SCALARS_ROWS + _SCALARS_STORE + rows
    ptrs = _STATE + _ROW_META + (block_table,) + store_ptrs + (kv_slots,) + scalar
    if spec.kernel == "c128a_split":  # the per-row counters and partials (SPLIT_WORKSPACE_ROW)
        ptrs += (_ptr("split_workspace", "f32", 16),)
    return ptrs + _SCALARS_ROWS + _SCALARS_STATE + _SCALARS_STORE + rows
