"""The manifest schema the runtime relies on."""

from __future__ import annotations

import hashlib
import json

import pytest

from compressc.cache.manifest import (
    FIELDS,
    OPTIONAL_FIELDS,
    make_manifest,
    manifest_params,
    validate_manifest,
)
from compressc.driver.compile import Artifacts, Resources
from compressc.specs import make_spec
from compressc.specs.abi import abi
from compressc.specs.launch import GridRule, LaunchInfo

CUBIN = b"\x7fELF fake cubin bytes"


def artifacts(**changes: object) -> Artifacts:
    fields = dict(
        entry="cutlass_c4a_h512_q64_r64_bf16",
        arch="sm_90a",
        ptx=".version 9.4\n",
        cubin=CUBIN,
        report=Resources(registers=157, spill_stores=0, spill_loads=0, stack=0, smem_static=8, barriers=1),
        block=(64, 1, 1),
        seconds=0.8,
        log="ptxas info\n",
    )
    return Artifacts(**{**fields, **changes})


def manifest(**changes: object) -> dict:
    spec = make_spec("c4a")
    m = make_manifest(
        key="a" * 64,
        kernel=spec.kernel,
        variant=spec.variant,
        launch=LaunchInfo("cutlass_c4a_h512_q64_r64_bf16", abi(spec), (64, 1, 1), GridRule("rows")),
        artifacts=artifacts(),
        toolchain={"cutlass_dsl": "4.8.1", "flavor": "cu13"},
        pipeline="default",
        compressc_version="0.1.0",
    )
    return {**m, **changes}


def test_make_manifest_fills_every_field() -> None:
    m = manifest()
    assert set(m) == set(FIELDS) | set(OPTIONAL_FIELDS) and m["programmatic"] is False
    assert validate_manifest(m) == []
    assert m["format"] == 1 and m["cubin"] == "kernel.cubin"
    assert m["cubin_sha256"] == hashlib.sha256(CUBIN).hexdigest()
    assert m["block"] == [64, 1, 1] and m["registers"] == 157 and m["smem_static"] == 8
    assert m["params"][0] == {"name": "state_cache", "kind": "ptr", "dtype": "f32", "align": 16}
    assert json.loads(json.dumps(m)) == m


def test_manifest_params_round_trip() -> None:
    assert manifest_params(manifest()) == abi(make_spec("c4a"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": 2}, "format is 2, this compressc reads format 1"),
        ({"entry": ""}, "entry is '', expected a non-empty string"),
        ({"registers": -1}, "registers is -1, expected an int >= 0"),
        ({"stack": True}, "stack is True, expected an int >= 0"),
        ({"key": "XYZ"}, "key is 'XYZ', expected 64 lowercase hex digits"),
        ({"cubin_sha256": "0" * 63}, "cubin_sha256 is '" + "0" * 63 + "', expected 64 lowercase hex digits"),
        ({"arch": "sm90"}, "arch is 'sm90', expected a canonical name such as 'sm_90a'"),
        ({"cubin": "../x.cubin"}, "cubin is '../x.cubin', expected a plain file name inside the entry"),
        ({"block": [64, 0, 1]}, "block is [64, 0, 1], expected three positive ints"),
        ({"programmatic": 1}, "programmatic is 1, expected true or false"),
        ({"toolchain": "4.8.1"}, "toolchain is '4.8.1', expected an object"),
        ({"compile_seconds": "fast"}, "compile_seconds is 'fast', expected a number"),
        ({"params": {}}, "params is {}, expected a list"),
        (
            {"params": [{"name": "x"}]},
            "params[0] is {'name': 'x'}, expected an object with name, kind, dtype, align",
        ),
        (
            {"params": [{"name": "x", "kind": "u16", "dtype": "", "align": 0}]},
            "params[0] is {'name': 'x', 'kind': 'u16', 'dtype': '', 'align': 0}: "
            "kind must be one of ptr, i32",
        ),
    ],
)
def test_each_problem_is_reported(change: dict, problem: str) -> None:
    problems = validate_manifest(manifest(**change))
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_missing_fields_are_named() -> None:
    m = manifest()
    del m["grid"], m["barriers"]
    assert validate_manifest(m) == ["missing field 'grid'", "missing field 'barriers'"]


def test_a_non_object_is_reported() -> None:
    assert validate_manifest([1, 2]) == ["manifest is a list, expected a JSON object"]


def test_a_manifest_without_programmatic_is_still_valid() -> None:
    # written before the field existed: the loader launches it the ordinary way
    m = manifest()
    del m["programmatic"]
    assert validate_manifest(m) == []
