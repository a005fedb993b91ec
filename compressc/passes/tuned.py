"""The tuned-schedule table: the measured winner per (arch, variant) that `default` uses.

`compressc tune --apply RESULTS.json` writes it; `resolve_pipeline("default", module,
arch)` reads it. The file is data shipped inside the package (passes/tuned.json):

  {"sm_90a": {"c4a_h512_q64_r64_bf16": {"pipeline": "...", "score_us": 4.1,
                                          "gpu": "NVIDIA H200", "date": "2026-11-27"}}}

An absent or empty file means "no tuned entries": every variant gets the derived
default. A tuned pipeline is ordinary pipeline text, so it is part of every cache key
built from it; changing this file changes exactly the keys of the variants it changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TUNED_FILE = Path(__file__).with_name("tuned.json")
ENTRY_FIELDS = ("pipeline", "score_us", "derived_score_us", "baseline_score_us", "gpu", "date")

Table = Mapping[str, Mapping[str, Mapping[str, Any]]]


class TunedFileError(ValueError):
    """The tuned-schedule file is not the table `compressc tune --apply` writes."""


def load_tuned(path: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The table in `path` (default: the package's tuned.json); {} when absent or empty."""
    path = TUNED_FILE if path is None else Path(path)
    if not path.is_file():
        return {}
    text = path.read_text()
    if not text.strip():
        return {}
    try:
        table = json.loads(text)
    except json.JSONDecodeError as err:
        raise TunedFileError(
            f"{path}: not valid JSON ({err}); fix it or rerun `compressc tune --apply`"
        ) from None
    _check_table(path, table)
    return table


def _check_table(path: Path, table: object) -> None:
    if not isinstance(table, dict):
        raise TunedFileError(f"{path}: expected {{arch: {{variant: entry}}}}, got {type(table).__name__}")
    for arch, variants in table.items():
        if not isinstance(variants, dict):
            raise TunedFileError(f"{path}: [{arch!r}] must map variant names to entries")
        for variant, entry in variants.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("pipeline"), str):
                raise TunedFileError(f"{path}: [{arch!r}][{variant!r}] needs a 'pipeline' string")


def tuned_entry(variant: str, arch: str | None, table: Table | None = None,
                inherit: str | None = None) -> Mapping[str, Any] | None:
    """The tuned entry of (variant, arch), else of `inherit` (the variant in its kernel's
    first cache format, unrotated: a format changes only the store, not the window the
    tuning measures), else None (no arch given, or none measured)."""
    if arch is None:
        return None
    table = load_tuned() if table is None else table
    entries = table.get(arch, {})
    own = entries.get(variant)
    if own is not None or inherit is None or inherit not in entries:
        return own
    return dict(entries[inherit], inherited_from=inherit)


def describe(entry: Mapping[str, Any] | None, variant: str, arch: str | None) -> str:
    """One line saying where `default` came from, for `compressc opt` and `emit`."""
    if entry is None:
        where = f"{variant} @ {arch}" if arch else variant
        return f"derived (no tuned entry for {where} in {TUNED_FILE.name})"
    score = entry.get("score_us")
    measured = ", ".join(str(x) for x in (entry.get("gpu"), entry.get("date")) if x)
    score_text = f", score {score:.2f} us" if isinstance(score, (int, float)) else ""
    source = entry.get("inherited_from")
    if source:
        return f"tuned for {source} @ {arch} ({measured}{score_text}), which {variant} inherits"
    return f"tuned for {variant} @ {arch} ({measured}{score_text})"


def merge_winners(table: Table, arch: str, winners: Mapping[str, Mapping[str, Any]]) -> dict:
    """`table` with the entries of `arch` replaced, variant by variant, by `winners`."""
    merged = {a: {v: dict(e) for v, e in vs.items()} for a, vs in table.items()}
    merged.setdefault(arch, {})
    for variant, entry in winners.items():
        merged[arch][variant] = {k: entry[k] for k in ENTRY_FIELDS if k in entry}
    merged[arch] = dict(sorted(merged[arch].items()))
    return dict(sorted(merged.items()))


def write_tuned(table: Table, path: Path | None = None) -> Path:
    """Write `table` deterministically (sorted, indented) and return the path written."""
    path = TUNED_FILE if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
