"""pack_args: one ctypes value per ABI parameter, in order, read back through the pointers."""

from __future__ import annotations

import ctypes
import threading

import pytest

from compressc.runtime.args import ArgPacker, launch_grid, pack_args, parse_grid
from compressc.specs import default_specs, make_spec
from compressc.specs.abi import Param, abi
from compressc.specs.launch import GridRule

_rule = parse_grid  # the tests spell rules as the manifest does
_CTYPE = {"ptr": ctypes.c_uint64, "i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float}


def _values(params: tuple[Param, ...]) -> dict[str, int | float]:
    values: dict[str, int | float] = {}
    for i, p in enumerate(params):
        if p.kind == "ptr":
            values[p.name] = 0x7F00_0000_0000 + 256 * i
        elif p.kind == "f32":
            values[p.name] = 1e-6
        else:
            values[p.name] = -(i + 1) if p.kind == "i32" else 2**40 + i
    return values


def _read_back(kernel_params: ctypes.Array, i: int, kind: str) -> int | float:
    return ctypes.cast(kernel_params[i], ctypes.POINTER(_CTYPE[kind])).contents.value


@pytest.mark.parametrize("spec", default_specs(), ids=lambda s: s.variant)
def test_values_round_trip_in_abi_order(spec):
    params = abi(spec)
    values = _values(params)
    keepalive, kernel_params = pack_args(params, dict(reversed(values.items())))
    assert len(kernel_params) == len(params) == len(keepalive)
    for i, p in enumerate(params):
        assert ctypes.sizeof(keepalive[i]) == p.size
        assert kernel_params[i] == ctypes.addressof(keepalive[i])
        want = ctypes.c_float(values[p.name]).value if p.kind == "f32" else values[p.name]
        assert _read_back(kernel_params, i, p.kind) == want


def test_kernel_params_is_a_void_pointer_array():
    _, kernel_params = pack_args(abi(make_spec("c4a")), _values(abi(make_spec("c4a"))))
    assert ctypes.sizeof(kernel_params) == 8 * len(abi(make_spec("c4a")))


def test_missing_parameter_is_named():
    params = abi(make_spec("c4a"))
    values = _values(params)
    del values["kv_block_shift"]
    with pytest.raises(ValueError, match="kernel parameter 'kv_block_shift' has no value"):
        pack_args(params, values)


def test_extra_parameter_is_named():
    params = abi(make_spec("c128a_compress", weight_dtype="f32"))
    values = _values(params) | {"rms_norm_eps": 1e-6}
    with pytest.raises(ValueError, match="value given for 'rms_norm_eps', which is not a kernel parameter"):
        pack_args(params, values)


def test_wrong_python_types():
    params = (Param("n", "i32"), Param("eps", "f32"))
    with pytest.raises(TypeError, match=r"kernel parameter 'n' \(i32\) expects an int, got float"):
        pack_args(params, {"n": 1.5, "eps": 1.0})
    with pytest.raises(TypeError, match=r"kernel parameter 'n' \(i32\) expects an int, got bool"):
        pack_args(params, {"n": True, "eps": 1.0})
    with pytest.raises(TypeError, match=r"kernel parameter 'eps' \(f32\) expects a float, got str"):
        pack_args(params, {"n": 1, "eps": "1e-6"})


def test_out_of_range_integers():
    with pytest.raises(ValueError, match=r"kernel parameter 'n' \(i32\) value 2147483648 is out of range"):
        pack_args((Param("n", "i32"),), {"n": 2**31})
    with pytest.raises(ValueError, match=r"kernel parameter 'p' \(ptr\) value -16 is out of range"):
        pack_args((Param("p", "ptr", "u8", 16),), {"p": -16})


def test_misaligned_pointer():
    with pytest.raises(
        ValueError, match="kernel parameter 'k_cache' expects a pointer aligned to 16 bytes, got 0x1008"
    ):
        pack_args((Param("k_cache", "ptr", "u8", 16),), {"k_cache": 0x1008})


def test_unknown_kind():
    with pytest.raises(ValueError, match="kernel parameter 'x' has unknown kind 'f16'"):
        pack_args((Param("x", "f16"),), {"x": 1})


def test_i64_and_null_pointer():
    params = (Param("p", "ptr", "f32", 16), Param("stride", "i64"))
    _, kernel_params = pack_args(params, {"p": 0, "stride": 2**40})
    assert _read_back(kernel_params, 0, "ptr") == 0
    assert _read_back(kernel_params, 1, "i64") == 2**40


@pytest.mark.parametrize("spec", default_specs(), ids=lambda s: s.variant)
def test_arg_packer_matches_pack_args(spec):
    params = abi(spec)
    values = _values(params)
    kernel_params = ArgPacker(params).pack(values | {"unused": 3})  # extra names are ignored
    assert len(kernel_params) == len(params)
    for i, p in enumerate(params):
        want = ctypes.c_float(values[p.name]).value if p.kind == "f32" else values[p.name]
        assert _read_back(kernel_params, i, p.kind) == want
        assert kernel_params[i] % 8 == 0


def test_arg_packer_reports_bad_values_like_pack_args():
    packer = ArgPacker((Param("n", "i32"), Param("p", "ptr", "u8", 16)))
    with pytest.raises(ValueError, match=r"kernel parameter 'n' \(i32\) value 2147483648 is out of range"):
        packer.pack({"n": 2**31, "p": 0})
    with pytest.raises(ValueError, match="kernel parameter 'p' has no value"):
        packer.pack({"n": 1})
    with pytest.raises(TypeError, match=r"kernel parameter 'p' \(ptr\) expects an int, got float"):
        packer.pack({"n": 1, "p": 1.5})


def test_arg_packer_buffers_are_per_thread():
    packer = ArgPacker((Param("n", "i64"),))
    mine = packer.pack({"n": 1})
    other = []
    thread = threading.Thread(target=lambda: other.append(ctypes.addressof(packer.pack({"n": 2}))))
    thread.start()
    thread.join()
    assert other[0] != ctypes.addressof(mine) and _read_back(mine, 0, "i64") == 1
    assert packer.pack({"n": 5}) is mine and _read_back(mine, 0, "i64") == 5


# -- launch grid ------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 7, 31, 32, 33, 1000, 4224, 4225, 16384, 100_000])
@pytest.mark.parametrize("policy", ["wave:1", "wave:8", "wave:32"])
@pytest.mark.parametrize("resident", [0, 1, 3])
def test_tiled_grid_is_one_wave_covering_every_row(policy, rows, resident):
    grid = launch_grid(_rule(policy), rows, sm_count=132, resident=resident)
    per_cta = -(-rows // grid)  # what the kernel derives from gridDim
    assert (grid - 1) * per_cta < rows <= grid * per_cta  # every CTA owns at least one row
    per_sm = int(policy.split(":")[1])
    assert grid <= 132 * (min(per_sm, resident) if resident else per_sm)  # never a second wave


def test_tiled_grid_is_one_cta_per_row_until_the_cap():
    assert launch_grid(_rule("wave:32"), 4224, 132) == 4224
    assert launch_grid(_rule("wave:32"), 16384, 132) == 4096  # four rows a CTA: one C4A boundary in prefill
    assert launch_grid(_rule("wave:8"), 16384, 132) == 1024
    # C128A compress: 512 threads x 122 registers, the SM holds one CTA, not the 4 its thread
    # slots would: a 528-CTA grid would run its active rows in four waves
    assert launch_grid(_rule("wave:4"), 16384, 132, resident=1) == 132


def test_rows_grid_and_empty_launches():
    assert launch_grid(_rule("rows"), 16384, 132) == 16384
    assert launch_grid(_rule("wave:32"), 0, 132) == 0 and launch_grid(_rule("rows"), 0, 132) == 0


def test_runs_grid_is_one_row_per_cta_until_the_sms_are_full_then_runs():
    assert launch_grid(_rule("runs:4"), 16384, 132) == 4096
    assert launch_grid(_rule("runs:4"), 16385, 132) == 4097  # the last run is partial
    assert launch_grid(_rule("runs:8"), 1, 132) == 1 and launch_grid(_rule("runs:4"), 0, 132) == 0
    # 5 resident CTAs per SM: 660 one-row CTAs fit, so T=512 runs one row each ...
    assert launch_grid(_rule("runs:4"), 512, 132, resident=5) == 512
    # ... and T=1000 two rows each (ceil(1000 / 660) = 2), T=16384 the full run of 4
    assert launch_grid(_rule("runs:4"), 1000, 132, resident=5) == 500
    assert launch_grid(_rule("runs:4"), 16384, 132, resident=5) == 4096


@pytest.mark.parametrize("rows", [1, 7, 33, 661, 1000, 2641, 16384, 100_000])
@pytest.mark.parametrize("resident", [0, 1, 5, 32])
def test_runs_grid_never_asks_for_more_rows_than_the_kernel_unrolls(rows, resident):
    grid = launch_grid(_rule("runs:4"), rows, 132, resident)
    per_cta = -(-rows // grid)  # what the kernel derives from gridDim
    assert 1 <= per_cta <= 4 and (grid - 1) * per_cta < rows <= grid * per_cta


def test_an_older_tiled_kernel_is_refused_not_launched_with_longer_runs():
    # kernels built before blocks of 32 rows read one ballot: more than 32 rows would be skipped
    with pytest.raises(ValueError, match="older compressc .*Rebuild them: compressc build"):
        launch_grid(_rule("tiled:4"), 16384, 132, resident=1)


@pytest.mark.parametrize("policy", ["tiles:4", "wave:", "wave:0", "wave:x", "runs:", "runs:0", ""])
def test_unknown_grid_policy_is_refused(policy):
    with pytest.raises(ValueError, match=r"expected 'rows', 'wave:<CTAs per SM>\[,cluster:<S>\]' or "
                                         "'runs:<rows per CTA>'"):
        launch_grid(_rule(policy), 10, 132)


@pytest.mark.parametrize(
    "policy", ["wave:2,cluster:3", "wave:2,cluster:16", "runs:4,cluster:2", "wave:2,x", "wave:2,"]
)
def test_bad_cluster_suffix_is_refused(policy):
    with pytest.raises(ValueError, match="a cluster suffix is ',cluster:<2|4|8>' after 'wave:<CTAs per SM>'"):
        launch_grid(_rule(policy), 10, 132)


def test_cluster_grid_counts_clusters():
    # one row per cluster while clusters last: 4 rows -> 4 clusters of 4 CTAs
    assert launch_grid(_rule("wave:2,cluster:4"), 4, 132, resident=1) == 16
    # a wave of 132 * 1 / 4 = 33 clusters: 16384 rows -> 497 rows a cluster, 33 clusters
    assert launch_grid(_rule("wave:2,cluster:4"), 16384, 132, resident=1) == 33 * 4
    # the driver's count of co-resident clusters caps the SM arithmetic (GPC boundaries)
    assert launch_grid(_rule("wave:2,cluster:4"), 16384, 132, resident=2, max_clusters=64) == 64 * 4
    # N caps too
    assert launch_grid(_rule("wave:1,cluster:4"), 16384, 132, resident=2, max_clusters=64) == 33 * 4
    # 100 rows over 16 clusters: 7 rows a cluster, so 15 clusters
    assert launch_grid(_rule("wave:2,cluster:8"), 100, 132, resident=1, max_clusters=16) == 15 * 8
    assert parse_grid("wave:8,cluster:2") == GridRule("wave", 8, 2)
    assert parse_grid("runs:4") == GridRule("runs", 4, 1)
    for text in ("rows", "runs:4", "wave:8", "wave:8,cluster:2"):
        assert parse_grid(text).spelling() == text


def test_cluster_launch_config_carries_the_cluster_dimension():
    from cuda.bindings import driver

    from compressc.runtime.cudalaunch import launch_config

    config = launch_config(4, (512, 1, 1), 0, False)
    assert (config.blockDimX, config.blockDimY, config.blockDimZ) == (512, 1, 1)
    assert config.numAttrs == 1
    attr = config.attrs[0]
    assert attr.id == int(driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
    assert tuple(attr.value.dims) == (4, 1, 1)


def test_programmatic_launch_config_allows_stream_overlap():
    from cuda.bindings import driver

    from compressc.runtime.cudalaunch import launch_config

    config = launch_config(1, (64, 1, 1), 0, True)
    assert config.numAttrs == 1
    attr = config.attrs[0]
    assert attr.id == int(driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
    assert attr.value.flag == 1
    both = launch_config(2, (64, 1, 1), 0, True)
    assert both.numAttrs == 2 and tuple(both.attrs[0].value.dims) == (2, 1, 1)
    assert launch_config(1, (64, 1, 1), 0, False).numAttrs == 0
