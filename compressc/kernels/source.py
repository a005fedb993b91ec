"""A tiny indented line buffer for writing Python source."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def blank(self) -> None:
        self.lines.append("")

    @contextmanager
    def indent(self, levels: int = 1) -> Iterator[None]:
        self.depth += levels
        try:
            yield
        finally:
            self.depth -= levels

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines) + "\n"
