"""What ties an entry's launch fields to its key and its cubin (issue 17, item 4).

The cubin's bytes are covered by `cubin_sha256`. The fields a launch reads from the
manifest (entry name, block, grid rule, dynamic smem, programmatic, ...) are covered
by `launch_sha256`: the sha256 of their canonical JSON, written by the build. An
entry's `key.json` (the ingredients hashed into its key) must hash to the key and
agree with the manifest's arch, pipeline and compressc version. Finally
the cubin's own `.nv.info` must agree with the manifest's entry, block and parameter
layout (`cubin_problem`, the check the build makes before publishing).

Generic over the manifest dict: the hashed fields are named in LAUNCH_FIELDS, so a
typed manifest record only has to keep writing them under the same names.
Standard library + compressc.driver.key/cubin only: the runtime imports this without cutlass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from compressc.driver.key import canonical_json, hash_ingredients

LAUNCH_FIELDS = (
    "key",
    "kernel",
    "variant",
    "arch",
    "entry",
    "params",
    "block",
    "grid",
    "smem_dynamic",
    "programmatic",
    "cubin",
    "cubin_sha256",
    "compressc_version",
    "toolchain",
    "pipeline",
)
_DEFAULTS = {"programmatic": False}  # absent in manifests written before the field existed
KEY_FILE = "key.json"
_AGREE = ("arch", "pipeline", "compressc_version")  # manifest fields that are also key ingredients


def launch_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest's LAUNCH_FIELDS."""
    fields = {name: manifest.get(name, _DEFAULTS.get(name)) for name in LAUNCH_FIELDS}
    return hashlib.sha256(canonical_json(fields)).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with its `launch_sha256` set."""
    return dict(manifest, launch_sha256=launch_digest(manifest))


def launch_problem(manifest: dict[str, Any]) -> str | None:
    """Why the manifest's launch fields are not the ones the build sealed, None if they are."""
    recorded = manifest.get("launch_sha256")
    if recorded is None:
        return "corrupt: the manifest has no launch_sha256 (written before launch fields were sealed)"
    if recorded != launch_digest(manifest):
        return (
            "tampered: the manifest's launch fields (" + ", ".join(LAUNCH_FIELDS) + ") do not hash to "
            "its launch_sha256: one was edited after the build"
        )
    return None


def read_ingredients(path: Path) -> dict[str, Any] | None:
    """The key ingredients recorded in an entry directory's key.json, None if absent or unreadable."""
    try:
        value = json.loads((Path(path) / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def ingredients_problem(key: str, manifest: dict[str, Any], ingredients: dict[str, Any] | None) -> str | None:
    """Why key.json does not describe this entry, None if it does (or if the entry has none)."""
    if ingredients is None:
        return None
    if hash_ingredients(ingredients) != key:
        return f"tampered: {KEY_FILE} does not hash to the entry's key"
    for field in _AGREE:
        if manifest.get(field) != ingredients.get(field):
            return (
                f"tampered: the manifest says {field} {manifest.get(field)!r}, the key was computed "
                f"for {ingredients.get(field)!r}"
            )
    return None


def cubin_problem(manifest: dict[str, Any], cubin: bytes) -> str | None:
    """Why the cubin's .nv.info disagrees with the manifest (entry, block, parameters, arch)."""
    from compressc.cache.manifest import manifest_params
    from compressc.driver.cubin import CubinError, check_cubin

    try:
        params = manifest_params(manifest)
        check_cubin(cubin, manifest["entry"], params, manifest["block"], arch=manifest["arch"])
    except CubinError as err:
        return f"tampered: the cubin's .nv.info disagrees with the manifest: {err}"
    return None
