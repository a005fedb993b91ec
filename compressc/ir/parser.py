"""Parser for the `.cir` text syntax: the exact inverse of `print_module`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from compressc.ir.core import Attr, Fields, Loc, Module, Op

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+|//[^\n]*)
  | (?P<nl>\n)
  | (?P<float>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|inf(?![\w.])|nan(?![\w.])))
  | (?P<int>-?\d+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<value>%[A-Za-z_][\w.]*)
  | (?P<symbol>@[A-Za-z_][\w.]*)
  | (?P<ident>[A-Za-z_][\w.]*)
  | (?P<punct>[{}()=,])
    """,
    re.VERBOSE,
)


class ParseError(ValueError):
    """Malformed `.cir` text; the message starts with file:line:col."""


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    line: int
    col: int


def _tokenize(text: str, file: str) -> list[_Tok]:
    toks, line, start, pos = [], 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ParseError(f"{file}:{line}:{pos - start + 1}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind == "nl":
            line, start = line + 1, m.end()
        elif kind != "ws":
            toks.append(_Tok(kind, m.group(), line, pos - start + 1))
        pos = m.end()
    toks.append(_Tok("eof", "", line, pos - start + 1))
    return toks


class _Parser:
    def __init__(self, text: str, file: str) -> None:
        self.toks, self.i, self.file = _tokenize(text, file), 0, file

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, what: str) -> ParseError:
        tok = self.peek()
        got = tok.text or "end of input"
        return ParseError(f"{self.file}:{tok.line}:{tok.col}: expected {what}, got {got!r}")

    def take(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok.kind != kind or (text is not None and tok.text != text):
            raise self.fail(repr(text) if text else kind)
        self.i += 1
        return tok

    def accept(self, kind: str, text: str) -> bool:
        tok = self.peek()
        if tok.kind == kind and tok.text == text:
            self.i += 1
            return True
        return False

    def value(self) -> Attr:
        tok = self.peek()
        if tok.kind in ("int", "float", "str"):
            self.i += 1
            return _literal(tok)
        if tok.kind == "ident" and tok.text in ("true", "false"):
            self.i += 1
            return tok.text == "true"
        if self.accept("punct", "("):
            items: list[int] = []
            while not self.accept("punct", ")"):
                if items:
                    self.take("punct", ",")
                items.append(int(self.take("int").text))
            return tuple(items)
        raise self.fail("a value (number, string, true/false or (ints))")

    def fields(self) -> Fields:
        self.take("punct", "{")
        items: list[tuple[str, Attr]] = []
        while not self.accept("punct", "}"):
            if items:
                self.take("punct", ",")
            key = self.take("ident").text
            self.take("punct", "=")
            items.append((key, self.value()))
        return tuple(items)

    def optional_sched(self) -> Fields:
        return self.fields() if self.accept("ident", "sched") else ()

    def op(self) -> Op:
        first = self.peek()
        result = ""
        if first.kind == "value":
            result = self.take("value").text[1:]
            self.take("punct", "=")
        name = self.take("ident").text
        operands: list[str] = []
        if self.accept("punct", "("):
            while not self.accept("punct", ")"):
                if operands:
                    self.take("punct", ",")
                operands.append(self.take("value").text[1:])
        attrs = self.fields() if self.peek().text == "{" else ()
        sched = self.optional_sched()
        return Op(name, result, tuple(operands), attrs, sched, Loc(self.file, first.line))

    def module(self) -> Module:
        self.take("ident", "module")
        name = self.take("symbol").text[1:]
        # `{key = ...` opens the attributes; `{op ...` or `{%r = ...` already opens the body.
        ahead = self.toks[self.i + 1 : self.i + 3]
        has_attrs = len(ahead) == 2 and ahead[0].kind == "ident" and ahead[1].text == "="
        attrs = self.fields() if has_attrs else ()
        self.take("punct", "{")
        ops: list[Op] = []
        while not self.accept("punct", "}"):
            ops.append(self.op())
        sched = self.optional_sched()
        self.take("eof")
        return Module(name, attrs, tuple(ops), sched)


def _literal(tok: _Tok) -> Attr:
    if tok.kind == "int":
        return int(tok.text)
    if tok.kind == "float":
        return float(tok.text)
    body = tok.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse_module(text: str, file: str = "<input>") -> Module:
    """Parse `.cir` text; raises ParseError naming file:line:col on malformed input."""
    return _Parser(text, file).module()
