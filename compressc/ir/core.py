"""The IR: one small immutable op type and a module that holds them.

Spec fields (`attrs`) say *what* an op computes; schedule fields (`sched`) say *how*.
Schedule fields start empty and are filled by passes. Everything is a frozen, slotted
dataclass of tuples, so structural equality is free and `replace` is the only edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

Attr = bool | int | float | str | tuple[int, ...]
Fields = tuple[tuple[str, Attr], ...]


@dataclass(frozen=True, slots=True)
class Loc:
    """Where a parsed op came from: file name and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def fields(**kwargs: Attr) -> Fields:
    """Build a Fields tuple in the given order (printing keeps that order)."""
    return tuple(kwargs.items())


def _get(items: Fields, key: str, default: Attr | None) -> Attr | None:
    for name, value in items:
        if name == key:
            return value
    return default


def _set(items: Fields, key: str, value: Attr) -> Fields:
    if any(name == key for name, _ in items):
        return tuple((n, value if n == key else v) for n, v in items)
    return items + ((key, value),)


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: `%result = name(%operands) {attrs} sched {sched}`."""

    name: str
    result: str = ""
    operands: tuple[str, ...] = ()
    attrs: Fields = ()
    sched: Fields = ()
    loc: Loc | None = field(default=None, compare=False)

    def attr(self, key: str, default: Attr | None = None) -> Attr | None:
        return _get(self.attrs, key, default)

    def get(self, key: str, default: Attr | None = None) -> Attr | None:
        """A schedule field, or `default` while no pass has set it."""
        return _get(self.sched, key, default)

    def with_sched(self, **values: Attr) -> Op:
        sched = self.sched
        for key, value in values.items():
            sched = _set(sched, key, value)
        return replace(self, sched=sched)


@dataclass(frozen=True, slots=True)
class Module:
    """A kernel: its spec-level attributes, kernel-wide schedule and op list."""

    name: str
    attrs: Fields = ()
    ops: tuple[Op, ...] = ()
    sched: Fields = ()

    def attr(self, key: str, default: Attr | None = None) -> Attr | None:
        return _get(self.attrs, key, default)

    def get(self, key: str, default: Attr | None = None) -> Attr | None:
        return _get(self.sched, key, default)

    def with_sched(self, **values: Attr) -> Module:
        sched = self.sched
        for key, value in values.items():
            sched = _set(sched, key, value)
        return replace(self, sched=sched)

    def find(self, name: str) -> Op | None:
        return next(self.iter(name), None)

    def iter(self, name: str) -> Iterator[Op]:
        return (op for op in self.ops if op.name == name)

    def replace_ops(self, name: str, fn: Callable[[Op], Op]) -> Module:
        """Rewrite every op called `name` with `fn`; other ops stay as they are."""
        return replace(self, ops=tuple(fn(op) if op.name == name else op for op in self.ops))

    def args(self) -> dict[str, Op]:
        """The kernel parameters (`cc.arg` ops) by parameter name."""
        return {str(op.attr("name")): op for op in self.iter("cc.arg")}
