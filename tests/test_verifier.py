"""Every message of the verifier, triggered once and checked: op, field, value and rule.

Op-level errors are triggered in `.cir` text, so they also show the source location
(file:line of the op) that a parsed module carries.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from compressc.ir import Module, Op, fields, parse_module, print_module
from compressc.ir.from_spec import module_from_spec
from compressc.ir.verifier import OP_ATTRS, VerifyError, verify
from compressc.passes import PassManager, parse_pipeline
from compressc.passes.manager import DEFAULT_FETCH
from compressc.specs import make_spec

C4A = make_spec("c4a")
INDEXER = make_spec("indexer_fp8")


def _lowered(spec=C4A, pipeline: str = "default") -> Module:
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(pipeline)).run(module)


def _op_sched(module: Module, name: str, **values) -> Module:
    """`module` with schedule fields of op `name` replaced; a value of None removes the field."""

    def edit(op: Op) -> Op:
        sched = tuple((k, v) for k, v in op.sched if values.get(k, v) is not None)
        return replace(op, sched=sched).with_sched(**{k: v for k, v in values.items() if v is not None})

    return module.replace_ops(name, edit)


def _fails(module: Module, message: str) -> str:
    with pytest.raises(VerifyError) as err:
        verify(module)
    assert str(err.value) == message
    return str(err.value)


def _fails_in_text(module: Module, op_name: str, message: str) -> None:
    """Print `module`, parse it back as k.cir and check the error names that op's line."""
    text = print_module(module)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if f" {op_name}(" in t or f" {op_name} " in t)
    _fails(parse_module(text, "k.cir"), f"k.cir:{line}: {message}")


def test_default_lowerings_verify() -> None:
    for spec in (C4A, INDEXER, make_spec("c128a_compress"), make_spec("c128a_store")):
        lowered = _lowered(spec)
        assert verify(lowered) is lowered


# -- structure ---------------------------------------------------------------------------
def test_missing_module_attribute() -> None:
    module = module_from_spec(C4A)
    broken = replace(module, attrs=tuple((k, v) for k, v in module.attrs if k != "ratio"))
    _fails(broken, "module @c4a_h512_q64_r64_bf16: ratio=None: missing module attribute")


def test_unknown_op() -> None:
    module = module_from_spec(C4A)
    broken = replace(module, ops=module.ops + (Op("cc.bogus", "z"),))
    _fails(broken, f"cc.bogus %z: name='cc.bogus': unknown op; known: {', '.join(OP_ATTRS)}")


def test_missing_op_attribute_with_location() -> None:
    module = module_from_spec(C4A)
    broken = module.replace_ops(
        "cc.pool_softmax", lambda op: replace(op, attrs=tuple(kv for kv in op.attrs if kv[0] != "head"))
    )
    _fails_in_text(broken, "cc.pool_softmax", "cc.pool_softmax %x: head=None: missing attribute")


def test_operand_used_before_defined() -> None:
    module = module_from_spec(C4A)
    ops = list(module.ops)
    i = next(k for k, op in enumerate(ops) if op.name == "cc.window")
    ops[i], ops[i + 1] = ops[i + 1], ops[i]  # the pooling now reads %win before the window defines it
    _fails_in_text(
        replace(module, ops=tuple(ops)),
        "cc.pool_softmax",
        "cc.pool_softmax %x: operand='%win': used before it is defined",
    )


def test_result_defined_twice() -> None:
    module = module_from_spec(C4A)
    twice = Op("cc.load_rows", "x", ("state_cache",), fields(head=512))
    broken = replace(module, ops=module.ops + (twice,))
    _fails(broken, "cc.load_rows %x: result='%x': defined twice")


# -- spec rules ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "attr,value,message",
    [
        (
            "head",
            500,
            "head_size=500: must be a multiple of 8 so every row is read with 16-byte fp32 and bf16 vectors",
        ),
        (
            "quant_block",
            48,
            "head_size=512: must be a multiple of quant_block=48 (head_size % quant_block == 0)",
        ),
        ("quant_block", 128, "quant_block=128: must divide the nope width head_size - rope = 448"),
        ("kernel", "c5a", "kernel='c5a': must be one of c4a, c128a_compress, c128a_store, indexer_fp8, "
                             "indexer_mxfp4, c128a_online, csa, c128a_split"),
        ("rope", 62, "rope=62: must be a multiple of 8 so rope bf16 stores are 16-byte vectors"),
    ],
)
def test_spec_rules_name_field_value_and_rule(attr: str, value, message: str) -> None:
    module = module_from_spec(C4A)
    broken = replace(module, attrs=tuple((k, value if k == attr else v) for k, v in module.attrs))
    _fails(broken, f"module @c4a_h512_q64_r64_bf16: {message}")


def test_indexer_quant_block_is_the_whole_head() -> None:
    module = module_from_spec(INDEXER)
    broken = module.replace_ops("cc.quant", lambda op: replace(op, attrs=_set(op.attrs, "block", 64)))
    _fails_in_text(
        broken,
        "cc.quant",
        "cc.quant %q: block=64: contradicts the module attributes, which imply block=128",
    )


def _set(items, key, value):
    return tuple((k, value if k == key else v) for k, v in items)


# -- the thread map -------------------------------------------------------------------------
MODULE = "module @c4a_h512_q64_r64_bf16: "


@pytest.mark.parametrize(
    "sched,message",
    [
        ({"elems_per_lane": 3}, "elems_per_lane=3: must be a power of two dividing head=512"),
        ({"elems_per_lane": 1024}, "elems_per_lane=1024: must be a power of two dividing head=512"),
        (
            {"elems_per_lane": 128},
            "elems_per_lane=128: must divide the nope width 448 so no lane straddles nope and rope",
        ),
        ({"threads": 48}, "threads=48: must be a whole number of warps, at most 1024"),
        (
            {"threads": 2048},
            "threads=2048: must be a whole number of warps, at most 1024 (pick more elems-per-lane)",
        ),
        ({"warps": 3}, "warps=3: must equal threads / 32 = 2"),
        ({"head_lanes": 32}, "head_lanes=32: must equal head / elems_per_lane = 64"),
        ({"threads": 128, "warps": 4}, "threads=128: must equal head_lanes * window_split = 64"),
        (
            {"elems_per_lane": 1, "head_lanes": 512, "threads": 512, "warps": 16},
            "elems_per_lane=1: must be even: a lane rotates whole GPT-J pairs and packs fp8 codes in pairs",
        ),
        ({"smem_bytes": 49168}, "smem_bytes=49168: must be at most 49152 (static shared memory)"),
    ],
)
def test_module_schedule_rules(sched: dict, message: str) -> None:
    _fails(_lowered().with_sched(**sched), MODULE + message)


def test_too_many_elems_per_lane_leaves_less_than_a_warp() -> None:
    with pytest.raises(VerifyError) as err:
        _lowered(pipeline="thread-map{elems-per-lane=32}")
    assert str(err.value) == MODULE + (
        "threads=16: must be a whole number of warps, at most 1024 (pick fewer elems-per-lane)"
    )


def test_window_split_needs_a_window() -> None:
    with pytest.raises(VerifyError) as err:
        _lowered(make_spec("c128a_store"), "thread-map{window-split=2}")
    assert str(err.value) == (
        "module @c128a_store_h512_q64_r64_bf16: window_split=2: must be 1: this kernel has no window to split"
    )


def test_split_window_needs_whole_warps_per_head() -> None:
    with pytest.raises(VerifyError) as err:
        _lowered(INDEXER, "thread-map{elems-per-lane=8,window-split=2}")
    assert str(err.value) == (
        "module @indexer_fp8_h128_q128_r64_bf16: head_lanes=16: must be a whole number of warps when the "
        "window is split (pick fewer elems-per-lane)"
    )


def test_window_split_divides_the_window() -> None:
    with pytest.raises(VerifyError) as err:
        _lowered(pipeline="thread-map{window-split=3}")
    assert str(err.value) == MODULE + "window_split=3: must divide the window of 8 rows"


# -- op schedules (checked in text, with the op's line) ----------------------------------------
@pytest.mark.parametrize(
    "op_name,sched,message",
    [
        (
            "cc.window",
            {"vector_bits": 256},
            "cc.window %win: vector_bits=256: must be 32, 64 or 128 and fit one lane's run (256 bits)",
        ),
        (
            "cc.rope",
            {"vector_bits": 16},
            "cc.rope %yr: vector_bits=16: must be 32, 64 or 128 and fit one lane's run (128 bits)",
        ),
        (
            "cc.window",
            {"rows_in_flight": 3},
            "cc.window %win: rows_in_flight=3: must divide the 8 rows each split group pools",
        ),
        (
            "cc.window",
            {"rows_in_flight": 0},
            "cc.window %win: rows_in_flight=0: must divide the 8 rows each split group pools",
        ),
        (
            "cc.pool_softmax",
            {"merge": "smem"},
            "cc.pool_softmax %x: merge='smem': must be 'none' for window_split=1",
        ),
        (
            "cc.rms_norm",
            {"lane_tree": (8, 4, 2, 1)},
            "cc.rms_norm %y: lane_tree=(8, 4, 2, 1): must XOR exactly the masks 1..16 of a warp",
        ),
        (
            "cc.rms_norm",
            {"cross_warp": "none"},
            "cc.rms_norm %y: cross_warp='none': must be 'smem': one head spans 2 warp(s)",
        ),
        (
            "cc.rms_norm",
            {"smem_offset": None},
            "cc.rms_norm %y: smem_offset=None: must be set for an exchange "
            "through smem (run plan-smem after lower-reduction)",
        ),
        (
            "cc.quant",
            {"lanes_per_group": 4},
            "cc.quant %q: lanes_per_group=4: must be quant_block / "
            "elems_per_lane = 64/8, a power of two <= 32 or a whole number of warps",
        ),
        (
            "cc.quant",
            {"cross_warp": "smem"},
            "cc.quant %q: cross_warp='smem': must be 'none': one quant block spans 1 warp(s)",
        ),
        (
            "cc.quant",
            {"group_tree": (4, 2, 2)},
            "cc.quant %q: group_tree=(4, 2, 2): must XOR exactly the masks 1..4 of the group",
        ),
        (
            "cc.quant",
            {"group_tree": (8, 4, 2, 1)},
            "cc.quant %q: group_tree=(8, 4, 2, 1): must XOR exactly the masks 1..4 of the group",
        ),
    ],
)
def test_op_schedule_rules_name_the_op_and_its_line(op_name: str, sched: dict, message: str) -> None:
    _fails_in_text(_op_sched(_lowered(), op_name, **sched), op_name, message)


def test_vector_bits_must_fit_a_short_run() -> None:
    lowered = _lowered(
        pipeline=f"thread-map{{elems-per-lane=2}},vectorize{{bits=32}},lower-reduction,plan-smem,{DEFAULT_FETCH}"
    )
    _fails_in_text(
        _op_sched(lowered, "cc.window", vector_bits=128),
        "cc.window",
        "cc.window %win: vector_bits=128: must be 32, 64 or 128 and fit one lane's run (64 bits)",
    )


def test_split_window_merges_through_smem() -> None:
    lowered = _lowered(make_spec("c128a_compress"))
    _fails_in_text(
        _op_sched(lowered, "cc.pool_softmax", merge="none"),
        "cc.pool_softmax",
        "cc.pool_softmax %x: merge='none': must be 'smem' for window_split=4",
    )
    _fails_in_text(
        _op_sched(lowered, "cc.pool_softmax", smem_offset=None),
        "cc.pool_softmax",
        "cc.pool_softmax %x: smem_offset=None: must be set for an exchange through smem "
        "(run plan-smem after lower-reduction)",
    )


def test_single_warp_head_exchanges_nothing() -> None:
    lowered = _lowered(INDEXER)
    _fails_in_text(
        _op_sched(lowered, "cc.rms_norm", cross_warp="smem"),
        "cc.rms_norm",
        "cc.rms_norm %y: cross_warp='smem': must be 'none': one head spans 1 warp(s)",
    )


def test_messages_of_built_modules_carry_no_location() -> None:
    broken = _op_sched(_lowered(), "cc.quant", lanes_per_group=4)
    with pytest.raises(VerifyError, match=r"^cc\.quant %q: lanes_per_group=4: "):
        verify(broken)


def test_pass_output_is_verified_by_the_manager() -> None:
    with pytest.raises(VerifyError, match=r"elems_per_lane=3: must be a power of two dividing head=512"):
        _lowered(pipeline="thread-map{elems-per-lane=3}")
