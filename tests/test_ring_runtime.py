"""The ring ops' argument checks (docs/kernels.md §10): one clear error, before any lookup or launch."""

from __future__ import annotations

import re

import pytest
import torch

from compressc.runtime import ops
from compressc.scenarios_ring import make_ring_scenario


@pytest.fixture(scope="module")
def sc():
    return make_ring_scenario([(300, 600), (127, 1)], capacity=256)


def _call(sc, **changes) -> None:
    args = list(sc.op_args(sc.k_cache.clone()))
    keywords = sc.op_keywords()
    if "block_size" in changes:
        args[5] = changes.pop("block_size")
    if "state_cache" in changes:
        args[0] = changes.pop("state_cache")
    ops.compress_c128a_ring(*args, **(keywords | changes))


@pytest.mark.parametrize("capacity", [200, 0, -128, 64])
def test_a_capacity_that_is_not_128_k_is_refused(sc, capacity: int) -> None:
    with pytest.raises(ValueError, match=rf"block_size must be the ring capacity 128 \* ceil\(\(128 \+ "
                       rf"num_speculative_tokens\) / 128\), a positive multiple of 128, got {capacity}"):
        _call(sc, block_size=capacity)


def test_a_capacity_that_is_not_whole_state_pages_is_refused(sc) -> None:
    pages = torch.zeros(4, 384, 1024)
    with pytest.raises(ValueError, match="block_size must be a multiple of the state page "
                       r"state_cache.shape\[1\] = 384 \(a ring is whole pages\), got 256"):
        _call(sc, state_cache=pages)


def test_a_ring_given_as_pages_of_8_passes_the_state_checks(sc) -> None:
    pages = sc.state_cache.reshape(-1, 8, 1024)  # the same ring, as pages of 8 rows
    with pytest.raises(ValueError, match="must be on a CUDA device"):  # the last check: all else passed
        _call(sc, state_cache=pages)
    with pytest.raises(ValueError, match=r"state_cache must have contiguous pages \(stride\(0\) = 8192\)"):
        _call(sc, state_cache=torch.zeros(64, 16, 1024)[:, :8])


@pytest.mark.parametrize("name,value,error,message", [
    ("kv", torch.zeros(10, 512), ValueError, r"kv must have shape \[>= T, head_size\] = \[>= 603, 512\]"),
    ("score", torch.zeros(603, 514)[:, :512], ValueError, "score must have contiguous rows whose stride is a "
     "multiple of 4 elements"),
    ("ape", torch.zeros(64, 512), ValueError, r"ape must be a contiguous \[128, 512\] table"),
    ("query_start_loc", torch.zeros(3, dtype=torch.int64), TypeError,
     "query_start_loc must have dtype torch.int32"),
    ("kv", torch.zeros(603, 512, dtype=torch.bfloat16), TypeError, "kv must have dtype torch.float32"),
])
def test_bad_inputs_name_the_argument(sc, name: str, value, error, message: str) -> None:
    with pytest.raises(error, match=message):
        _call(sc, **{name: value})


def test_good_cpu_arguments_reach_the_device_check_only(sc) -> None:
    with pytest.raises(ValueError, match="must be on a CUDA device"):
        _call(sc)


def test_the_tail_save_checks_its_capacity_and_shapes(sc) -> None:
    args = (sc.state_cache.clone(), sc.kv, sc.score, sc.ape, sc.positions, sc.tail_slot_mapping)
    with pytest.raises(ValueError, match="block_size must be the ring capacity"):
        ops.save_ring_tail(*args, 100)
    with pytest.raises(ValueError, match="positions must have at least T"):
        ops.save_ring_tail(*args[:4], sc.positions[:5], sc.tail_slot_mapping, 256)
    with pytest.raises(TypeError, match="tail_slot_mapping must have dtype torch.int64"):
        ops.save_ring_tail(*args[:5], sc.tail_slot_mapping.int(), 256)


def _bounds_error(sc, monkeypatch, **changes) -> str:
    """The error of a ring call with COMPRESSC_CHECK_BOUNDS on and `changes` to its arguments."""
    from compressc.runtime import ring

    monkeypatch.setattr(ring, "check_bounds_enabled", lambda: True)
    args = dict(zip(ring._NAMES, sc.op_args(sc.k_cache.clone()), strict=True))
    keywords = sc.op_keywords()
    for name, change in changes.items():
        target = args if name in args else keywords
        target[name] = change(target[name].clone())
    with pytest.raises(ValueError) as err:
        ops.compress_c128a_ring(*args.values(), **keywords)
    return str(err.value)


def _at_active(values: torch.Tensor, sc, value: int) -> torch.Tensor:
    values[int(sc.active().nonzero()[-1, 0])] = value
    return values


def test_bounds_mode_checks_the_ring_indices(sc, monkeypatch) -> None:
    """COMPRESSC_CHECK_BOUNDS covers the ring (issue 17 item 5): it has no checked build."""
    assert "must be on a CUDA device" in _bounds_error(sc, monkeypatch)  # every index in range
    got = _bounds_error(sc, monkeypatch, token_to_req_indices=lambda t: _at_active(t, sc, 9))
    assert re.search(r"token_to_req_indices\[\d+\] = 9 is out of range: block_table has 2 row\(s\)", got)
    got = _bounds_error(sc, monkeypatch, block_table=lambda t: t.fill_(7))
    assert re.search(r"block_table\[\d, 0\] = 7 \(the ring of row \d+\) is not a ring of state_cache, "
                     r"which has 4 ring\(s\)", got), got
    got = _bounds_error(sc, monkeypatch, query_start_loc=lambda t: t.fill_(-5))
    assert re.search(r"query_start_loc\[\d\] = -5 \(used by row \d+\) is not a launched row", got), got
    got = _bounds_error(sc, monkeypatch, kv_slot_mapping=lambda t: _at_active(t, sc, 10**9))
    assert re.search(r"kv_slot_mapping\[\d+\] = 1000000000 is past k_cache", got), got
