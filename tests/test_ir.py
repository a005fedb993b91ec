"""The `.cir` text syntax: `parse(print(m)) == m`, printer determinism, parse errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compressc.ir import Module, Op, ParseError, fields, parse_module, print_module
from compressc.ir.from_spec import module_from_spec
from compressc.ir.printer import format_value
from compressc.ir.verifier import OP_ATTRS, verify
from compressc.passes import parse_pipeline, resolve_pipeline
from compressc.specs import default_specs, make_spec

# Identifiers, including ones that start like the float literals `inf` and `nan`.
IDENT = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True),
    st.sampled_from(["info", "inflight", "nan_ok", "nano", "inf.x", "true_", "sched_x"]),
)
ATTR = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.sampled_from([1e-06, 1e-4, 448.0, -0.0, 1e16, float("inf"), float("-inf")]),
    st.text(max_size=12),
    st.sampled_from(['say "hi"', "back\\slash", '\\"', "trailing\\", "{a = 1}", "%x", "// not a comment"]),
    st.lists(st.integers(-(2**31), 2**31), max_size=5).map(tuple),
)


def _fields(keys: list[str], values: list) -> tuple:
    return tuple(zip(keys, values, strict=False))


@st.composite
def fields_st(draw, max_size: int = 4) -> tuple:
    keys = draw(st.lists(IDENT, max_size=max_size, unique=True))
    return _fields(keys, draw(st.lists(ATTR, min_size=len(keys), max_size=len(keys))))


@st.composite
def op_st(draw) -> Op:
    return Op(
        name=draw(st.sampled_from(sorted(OP_ATTRS))),
        result=draw(st.one_of(st.just(""), IDENT)),
        operands=tuple(draw(st.lists(IDENT, max_size=3))),
        attrs=draw(fields_st()),
        sched=draw(fields_st(3)),
    )


@st.composite
def module_st(draw) -> Module:
    ops = tuple(draw(st.lists(op_st(), max_size=5)))
    return Module(draw(IDENT), draw(fields_st()), ops, draw(fields_st(3)))


def _round_trip(module: Module) -> None:
    text = print_module(module)
    back = parse_module(text)
    assert back == module
    # == cannot tell True from 1 or 1.0 from 1: the re-printed text can.
    assert print_module(back) == text


@given(module_st())
def test_parse_inverts_print_on_generated_modules(module: Module) -> None:
    _round_trip(module)


@given(st.lists(ATTR, min_size=1, max_size=6))
def test_every_attr_kind_round_trips_with_its_type(values: list) -> None:
    module = Module("m", _fields([f"k{i}" for i in range(len(values))], values))
    back = parse_module(print_module(module))
    for (_, want), (_, got) in zip(module.attrs, back.attrs, strict=True):
        assert type(got) is type(want) and got == want


def _stages(spec, pipeline: str) -> list[Module]:
    """The spec-level module and its form after each pass of `pipeline` (all verified)."""
    seen = [module_from_spec(spec)]
    for p in parse_pipeline(resolve_pipeline(pipeline, seen[0])):
        seen.append(verify(p.apply(seen[-1])))
    return seen


@pytest.mark.parametrize("pipeline", ["default", "baseline"])
@pytest.mark.parametrize("spec", default_specs(), ids=lambda s: s.variant)
def test_every_stage_of_every_default_variant_round_trips(spec, pipeline: str) -> None:
    for module in _stages(spec, pipeline):
        _round_trip(module)


def test_parsed_ops_remember_file_and_line() -> None:
    text = print_module(module_from_spec(make_spec("c4a")))
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "cc.row_guard" in t)
    module = parse_module(text, "c4a.cir")
    assert str(module.find("cc.row_guard").loc) == f"c4a.cir:{line}"
    assert module == module_from_spec(make_spec("c4a"))  # locations do not take part in equality


def test_printer_is_deterministic_and_skips_unset_schedule() -> None:
    spec = make_spec("c4a")
    a, b = module_from_spec(spec), module_from_spec(spec)
    assert print_module(a) == print_module(b)
    assert " sched " not in print_module(a)  # a spec-level module has no schedule yet
    lowered = _stages(spec, "default")[-1]
    assert print_module(lowered) == print_module(_stages(spec, "default")[-1])
    assert print_module(lowered).endswith("}\n") and "barriers = 1" in print_module(lowered).splitlines()[-1]


def test_printer_formats_each_value_kind() -> None:
    assert [format_value(v) for v in (True, -3, 1e-06, 2.0, 'a"b\\c', (4, 2, 1), ())] == [
        "true", "-3", "1e-06", "2.0", '"a\\"b\\\\c"', "(4, 2, 1)", "()"
    ]
    with pytest.raises(TypeError, match="cannot print attribute value"):
        format_value([1, 2])  # type: ignore[arg-type]


def test_comments_and_blank_lines_are_ignored() -> None:
    text = ("// a header\nmodule @m {k = 1} {\n\n  // an op\n"
            "  %x = cc.pool_softmax {head = 8}  // trailing\n}\n")
    assert parse_module(text) == Module("m", fields(k=1), (Op("cc.pool_softmax", "x", (), fields(head=8)),))


@pytest.mark.parametrize(
    "text,where,message",
    [
        ("module @m {\n  %x = cc.op $\n}\n", "f.cir:2:14", "unexpected character '$'"),
        ("modul @m {\n}\n", "f.cir:1:1", "expected 'module', got 'modul'"),
        ("module m {\n}\n", "f.cir:1:8", "expected symbol, got 'm'"),
        ("module @m {\n  %x cc.op\n}\n", "f.cir:2:6", "expected '=', got 'cc.op'"),
        ("module @m {\n  cc.op(x)\n}\n", "f.cir:2:9", "expected value, got 'x'"),
        ("module @m {\n  cc.op {k = }\n}\n", "f.cir:2:14",
         "expected a value (number, string, true/false or (ints))"),
        ("module @m {\n  cc.op {k = (1, 2.5)}\n}\n", "f.cir:2:18", "expected int, got '2.5'"),
        ("module @m {\n  cc.op {k = 1 j = 2}\n}\n", "f.cir:2:16", "expected ',', got 'j'"),
        ("module @m {k = 1} {\n  cc.op\n", "f.cir:3:1", "expected ident, got 'end of input'"),
        ("module @m {\n}\nextra\n", "f.cir:3:1", "expected eof, got 'extra'"),
    ],
)
def test_parse_errors_name_file_line_and_column(text: str, where: str, message: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_module(text, "f.cir")
    assert str(err.value).startswith(f"{where}: ")
    assert message in str(err.value)
