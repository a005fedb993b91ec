"""Which build the runtime may serve: the key ingredients of a variant's default build.

The runtime asks for `wanted_build(spec, arch)`: every key ingredient of the default
pipeline's build (spec IR, tuned pipeline string, arch, options, compressc version,
compiler-source fingerprint), computed without cutlass. Where the build toolchain is
installed its versions complete the key, and only the entry of exactly that key is
served. Without it (a kernel-pack user) an entry is served when the ingredients its
key.json records match on everything but the toolchain. So a version bump, an edited
compiler source or a `compressc build -p baseline` is never served to a default request.

Computing the ingredients imports the compiler (IR, passes, emitter: ~20 ms of a cold
start). A kernel pack therefore carries them, computed when the wheel was written:
`wanted.json` = {"format", "fingerprint", "builds": {"<variant>@<arch>": ingredients}}, the
default builds of the pack's kernels. The runtime uses them only when the pack's
fingerprint equals `served_fingerprint()`, a hash of this compressc's version, the bytes
of every compiler source and the tuned table, all of which the ingredients are a function
of (read at start-up; the sources' hash is reused from a record in the user cache while
every source keeps its size and mtime, see `recorded_source_fingerprint`); otherwise it
computes them as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from compressc.cache.integrity import KEY_FILE
from compressc.driver.key import canonical_json, hash_ingredients, recorded_source_fingerprint
from compressc.specs.family import KernelSpec

WANTED_FILE = "wanted.json"
WANTED_FORMAT = 1
TUNED_TABLE = Path(__file__).resolve().parents[1] / "passes" / "tuned.json"  # passes.tuned.TUNED_FILE
_VARIANT = re.compile(
    r"^(?P<kernel>\w+?)(?:_(?P<layout>ring))?_h(?P<head>\d+)_q(?P<quant>\d+)_r(?P<rope>\d+)_(?P<dtype>bf16|f32)"
    r"(?:_(?P<format>full_bf16|full_fp8))?(?:_idx(?P<indexer>fp8|mxfp4))?(?P<rotate>_rot)?(?P<bounds>_bounds)?$"
)


# A NamedTuple, not a dataclass: as immutable, and 0.05 ms to define instead of 0.4 ms, on the
# runtime's cold-start path (benchmarks/NOTES.md, session 8).
class Wanted(NamedTuple):
    """The ingredients of the build to serve; `key` is None where the toolchain is unknown."""

    ingredients: dict[str, Any]
    key: str | None


@cache
def wanted_build(spec: KernelSpec, arch: str, pipeline: str = "default") -> Wanted:
    """The `pipeline` build of (spec, arch); cached: a process serves one source tree."""
    from compressc.driver.compile import ToolchainError, toolchain_fingerprint
    from compressc.driver.plan import plan_ingredients

    try:
        toolchain = toolchain_fingerprint()
    except ToolchainError:
        toolchain = None
    # Unknown toolchain: a placeholder keeps plan_ingredients from looking it up (and failing).
    ingredients = plan_ingredients(spec, arch, pipeline, toolchain=toolchain or {"unknown": "toolchain"})
    key = hash_ingredients(ingredients) if toolchain else None
    return Wanted({name: v for name, v in ingredients.items() if name != "toolchain"}, key)


def source_fingerprint() -> str:
    """The compiler sources' fingerprint, reused from the user cache's stat record while no source
    changed (compressc.driver.key.recorded_source_fingerprint)."""
    from compressc.config import Config

    return recorded_source_fingerprint(Config.from_env().cache_dir)


@cache
def served_fingerprint() -> str:
    """What the default builds' ingredients are a function of: compressc's version, the compiler
    sources' fingerprint and the tuned table (data beside the sources, not in their fingerprint)."""
    from compressc import __version__

    tuned = TUNED_TABLE.read_bytes() if TUNED_TABLE.is_file() else b""
    parts = {"compressc_version": __version__, "source_fingerprint": source_fingerprint(),
             "tuned_sha256": hashlib.sha256(tuned).hexdigest()}
    return hashlib.sha256(canonical_json(parts)).hexdigest()


def wanted_file(labels: list[tuple[KernelSpec, str]]) -> dict[str, Any]:
    """The `wanted.json` of a pack holding the default builds of (spec, arch) `labels`."""
    builds = {f"{spec.variant}@{arch}": wanted_build(spec, arch).ingredients for spec, arch in labels}
    return {"format": WANTED_FORMAT, "fingerprint": served_fingerprint(),
            "builds": dict(sorted(builds.items()))}


def packed_wanted(root: Path, spec: KernelSpec, arch: str, pipeline: str = "default") -> Wanted | None:
    """The default build of (spec, arch) as the pack at `root` recorded it, when that record is
    of this very compressc (same served_fingerprint); None otherwise (compute it instead)."""
    if pipeline != "default":
        return None
    builds = _packed_builds(Path(root))
    ingredients = builds.get(f"{spec.variant}@{arch}") if builds else None
    return Wanted(dict(ingredients), None) if isinstance(ingredients, dict) else None


@cache
def _packed_builds(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / WANTED_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != WANTED_FORMAT:
        return None
    if data.get("fingerprint") != served_fingerprint() or not isinstance(data.get("builds"), dict):
        return None
    return data["builds"]


def stale_reason(wanted: Wanted, entry: Any, *, exact: bool) -> str | None:
    """Why `entry` is not the wanted build, None if it is.

    exact: the entry's key must be the wanted key (the user cache, when the toolchain is
    known); otherwise the recorded ingredients must match on everything but the toolchain
    (kernel packs, or no toolchain here).
    """
    if not exact or wanted.key is None:
        return _differs(wanted, entry)
    if entry.key == wanted.key:
        return None
    return _differs(wanted, entry) or "built with another toolchain than the one installed here"


def _differs(wanted: Wanted, entry: Any) -> str | None:
    recorded = _recorded(entry)
    if recorded is None:
        return f"it has no {KEY_FILE} (built by an older compressc), so what built it is unknown"
    if hash_ingredients(recorded) != entry.key:
        return f"its {KEY_FILE} does not hash to its key (tampered)"
    for name, want in wanted.ingredients.items():
        if recorded.get(name) != want:
            return f"built with {name} {_short(recorded.get(name))}, this compressc serves {_short(want)}"
    return None


def _recorded(entry: Any) -> dict[str, Any] | None:
    text = entry.text(KEY_FILE) if hasattr(entry, "text") else None
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) <= 100:
        return text
    return f"{text[:60]}... (sha256 {_digest(text)}, {len(text)} characters)"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_of(manifest: dict[str, Any]) -> KernelSpec | None:
    """The spec a manifest's variant name stands for, None if it names no valid variant."""
    from compressc.specs.errors import SpecError
    from compressc.specs.family import make_spec

    match = _VARIANT.match(str(manifest.get("variant", "")))
    if match is None or match["kernel"] != manifest.get("kernel"):
        return None
    try:
        spec = make_spec(match["kernel"], int(match["head"]), int(match["quant"]), rope=int(match["rope"]),
                         weight_dtype=match["dtype"], state_layout=match["layout"] or "paged",
                         cache_format=match["format"], rotate=bool(match["rotate"]),
                         bounds=bool(match["bounds"]),
                         indexer=f"indexer_{match['indexer']}" if match["indexer"] else None)
    except SpecError:
        return None
    return spec if spec.variant == manifest["variant"] else None


def is_default_build(entry: Any) -> bool:
    """Whether `entry` is what the runtime serves for its variant@arch (the default build)."""
    spec = spec_of(entry.manifest)
    if spec is None:
        return False
    return stale_reason(wanted_build(spec, entry.manifest["arch"]), entry, exact=True) is None
