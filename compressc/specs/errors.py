"""Errors raised for variants the layout rules reject."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec field breaks a layout rule; the message names field, value and rule."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"invalid {field}={value!r}: {rule}")
