"""Malformed calls never reach a launch (issue 17, item 5): the structural host checks,
and with COMPRESSC_CHECK_BOUNDS=1 the index values, on CPU tensors.

A call that passes every check ends at the device check ("must be on a CUDA device"),
which is where a GPU launch would follow: a rejection is any other error.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from test_runtime_ops import OPS, make_args

from compressc.runtime import ops
from compressc.runtime.bounds import IndexOutOfBoundsError

REACHES_LAUNCH = "must be on a CUDA device"
STRIDE = 64 * (576 + 8)  # c4a: kv_cache_block_size 64 tokens of 576 value + 8 scale bytes per page


def _set(name: str, index: tuple, value: int):
    def change(a: dict) -> None:
        a[name] = a[name].clone()
        a[name][index] = value

    return change


def _replace(name: str, make):
    def change(a: dict) -> None:
        a[name] = make(a)

    return change


def _short_pages(storage: int, width: int) -> torch.Tensor:
    """k_cache [3, width] with page stride STRIDE over `storage` bytes: the last page is cut short."""
    return torch.zeros(storage, dtype=torch.uint8).as_strided((3, width), (STRIDE, 1))


def _wide_table(a: dict) -> None:
    """80 columns, so that a position can pass the table and still miss cos_sin_cache."""
    a["block_table"] = (torch.arange(80, dtype=torch.int32) % 6).reshape(1, 80)
    a["positions"] = torch.tensor([0, 1, 2, 67, 4])


# (call, change of valid c4a arguments, message); row 3 (position 3) is the active row.
STRUCTURAL = [
    ("eps NaN", _replace("rms_norm_eps", lambda a: math.nan), "rms_norm_eps must be a finite float32 value"),
    ("eps 1e40", _replace("rms_norm_eps", lambda a: 1e40),
     r"rms_norm_eps must be a finite float32 value >= 0 \(at most 3.402823e\+38\), got 1e\+40"),
    ("eps inf", _replace("rms_norm_eps", lambda a: math.inf), "rms_norm_eps must be a finite float32 value"),
    ("eps < 0", _replace("rms_norm_eps", lambda a: -1e-6), "rms_norm_eps must be a finite float32 value"),
    ("eps 10**400", _replace("rms_norm_eps", lambda a: 10**400), "rms_norm_eps must be a finite"),
    ("k_cache storage short", _replace("k_cache", lambda a: _short_pages(2 * STRIDE + 16, 16)),
     rf"k_cache must have storage for \(num_pages - 1\) \* stride\(0\) \+ kv_cache_block_size \* bytes per "
     rf"token = \(3 - 1\) \* {STRIDE} \+ 37376 = {2 * STRIDE + 37376} bytes, got {2 * STRIDE + 16} bytes"),
    ("k_cache storage short by one", _replace("k_cache", lambda a: _short_pages(3 * STRIDE - 1, 1)),
     "k_cache must have storage for"),
    ("empty state_cache", _replace("state_cache", lambda a: torch.randn(0, 4, 2048)),
     r"state_cache must not be empty when T = 5 rows are launched, got shape \(0, 4, 2048\)"),
    ("empty block_table rows", _replace("block_table", lambda a: torch.zeros(0, 6, dtype=torch.int32)),
     r"block_table must not be empty when T = 5 rows are launched, got shape \(0, 6\)"),
    ("empty block_table columns", _replace("block_table", lambda a: torch.zeros(1, 0, dtype=torch.int32)),
     r"block_table must not be empty when T = 5 rows are launched, got shape \(1, 0\)"),
    ("empty cos_sin_cache", _replace("cos_sin_cache", lambda a: torch.randn(0, 64)),
     r"cos_sin_cache must not be empty when T = 5 rows are launched, got shape \(0, 64\)"),
    ("empty k_cache", _replace("k_cache", lambda a: torch.zeros(0, STRIDE, dtype=torch.uint8)),
     r"k_cache must not be empty when T = 5 rows are launched, got shape \(0, 37376\)"),
    ("B != k_cache.shape[1]", lambda a: a.update(
        k_cache=torch.zeros(3, 64, 584, dtype=torch.uint8), kv_cache_block_size=32),
     r"kv_cache_block_size must equal k_cache.shape\[1\] = 64, got 32"),
]
INDEX_VALUES = [
    ("request 1 of 1", _set("token_to_req_indices", 3, 1),
     r"token_to_req_indices\[3\] = 1 is out of range: block_table has 1 row\(s\) \(COMPRESSC_CHECK_BOUNDS\)"),
    ("request 7 of 1", _set("token_to_req_indices", 3, 7), r"token_to_req_indices\[3\] = 7 is out of range"),
    ("page = pages", _set("block_table", (0, 0), 6),
     r"block_table\[0, 0\] = 6 \(used by row 3\) is not a page of state_cache, which has 6 page\(s\)"),
    ("negative page", _set("block_table", (0, 0), -1), r"block_table\[0, 0\] = -1 \(used by row 3\)"),
    ("page past table", _set("positions", 3, 27),
     r"positions\[3\] = 27 needs block_table column 6 \(block_size 4\), block_table has 6 column\(s\)"),
    ("position past cos/sin", _wide_table,
     r"positions\[3\] = 67 needs cos_sin_cache row 64, cos_sin_cache has 64 row\(s\)"),
    ("kv slot past cache", _set("kv_slot_mapping", 3, 3 * 64),
     r"kv_slot_mapping\[3\] = 192 is past k_cache: page 3 \(kv_cache_block_size 64\), k_cache has 3"),
    ("kv slot huge", _set("kv_slot_mapping", 3, 10**12), r"kv_slot_mapping\[3\] = 1000000000000 is past"),
]


def _call(change, op: str = "c4a") -> str:
    """The error text of the call (REACHES_LAUNCH when every check passed)."""
    args = make_args(op)
    change(args)
    try:
        OPS[op](**args)
    except (TypeError, ValueError) as err:
        return str(err)
    raise AssertionError("a CPU call returned: the device check did not run")


@pytest.fixture
def bounds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ops, "check_bounds_enabled", lambda: True)


def test_every_malformed_call_is_rejected_with_bounds_on(bounds) -> None:
    cases = STRUCTURAL + INDEX_VALUES
    outcomes = [(name, message, _call(change)) for name, change, message in cases]
    rejected = [name for name, message, got in outcomes if REACHES_LAUNCH not in got]
    assert (len(rejected), len(cases)) == (21, 21), [o for o in outcomes if o[0] not in rejected]
    wrong = [(name, got) for name, message, got in outcomes if not re.search(message, got)]
    assert wrong == []
    assert REACHES_LAUNCH in _call(lambda a: None)  # and a valid call is not rejected


def test_index_values_are_only_checked_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "check_bounds_enabled", lambda: False)
    assert [REACHES_LAUNCH in _call(change) for _, change, _ in INDEX_VALUES] == [True] * len(INDEX_VALUES)
    assert [REACHES_LAUNCH in _call(change) for _, change, _ in STRUCTURAL] == [False] * len(STRUCTURAL)


def test_inactive_rows_are_not_checked(bounds) -> None:
    """Padding rows (slot -1) and non-boundary positions never index anything."""
    assert REACHES_LAUNCH in _call(_set("token_to_req_indices", 0, 99))  # row 0: not a boundary
    padding = (_set("slot_mapping", 3, -1), _set("kv_slot_mapping", 3, 999))
    assert REACHES_LAUNCH in _call(lambda a: [change(a) for change in padding])


def _c128a_valid(a: dict) -> None:
    a["block_table"] = (torch.arange(16, dtype=torch.int32) % 6).reshape(1, 16)  # 128 rows / block_size 8
    a["positions"] = torch.tensor([0, 1, 2, 3, 127])


def test_c128a_and_the_indexer_are_checked_too(bounds) -> None:
    assert REACHES_LAUNCH in _call(_c128a_valid, "c128a")
    got = _call(lambda a: (_c128a_valid(a), _set("block_table", (0, 15), 6)(a)), "c128a")
    assert got.startswith("block_table[0, 15] = 6 (used by row 4) is not a page of state_cache")
    assert REACHES_LAUNCH in _call(lambda a: None, "indexer_fp8")
    got = _call(_set("kv_slot_mapping", 3, 3 * 64), "indexer_fp8")
    assert got.startswith("kv_slot_mapping[3] = 192 is past k_cache")


def test_the_error_is_an_index_error_and_the_setting_is_read_from_the_environment(monkeypatch) -> None:
    ops.check_bounds_enabled.cache_clear()
    monkeypatch.setenv("COMPRESSC_CHECK_BOUNDS", "1")
    try:
        assert ops.check_bounds_enabled() is True
        with pytest.raises(IndexOutOfBoundsError):
            OPS["c4a"](**{**make_args("c4a"), "kv_slot_mapping": torch.full((5,), 10**9)})
    finally:
        ops.check_bounds_enabled.cache_clear()
