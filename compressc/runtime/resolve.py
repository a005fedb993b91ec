"""Finding a kernel's cubin: installed kernel packs -> user cache -> JIT build -> error.

Pure Python (no CUDA, no cutlass): the store and the build driver are imported lazily,
so a machine with only the prebuilt-kernel install can resolve and load kernels.
A pack or cache root is a Store-shaped directory (`compressc.cache.store.Store`):
`index/<variant>@<arch>.json` -> {"key"}, `<key[:2]>/<key>/manifest.json` + `kernel.cubin`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from compressc.runtime.args import grid_rule_problem
from compressc.runtime.entrypoints import entry_points
from compressc.specs.abi import abi
from compressc.specs.family import KernelSpec
from compressc.specs.formats import formats_for

log = logging.getLogger("compressc.runtime")
ENTRY_POINT_GROUP = "compressc.kernel_packs"
MANIFEST_FORMAT = 1
BUILD_EXTRA_INSTALL = "pip install 'compressc[build]'"
_ARCH_RE = re.compile(r"^sm_(\d+)(\d)([af]?)$")


class KernelNotFoundError(LookupError):
    """No source had the kernel; the message names every place searched and the fix."""


class ManifestError(ValueError):
    """A cache entry's manifest does not describe the kernel the runtime asked for."""


class StaleEntryError(ValueError):
    """An entry is another build than the one asked for (older compressc, other pipeline)."""


# A NamedTuple, not a dataclass: as immutable, and 0.05 ms to define instead of 0.4 ms, on the
# runtime's cold-start path (benchmarks/NOTES.md, session 8).
class KernelImage(NamedTuple):
    """A resolved kernel: its manifest, cubin bytes and where they came from."""

    manifest: dict[str, Any]
    cubin: bytes
    origin: str

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def entry(self) -> str:
        return str(self.manifest["entry"])

    @property
    def arch(self) -> str:
        return str(self.manifest["arch"])

    @property
    def block(self) -> tuple[int, int, int]:
        x, y, z = self.manifest["block"]
        return int(x), int(y), int(z)

    @property
    def smem_dynamic(self) -> int:
        return int(self.manifest["smem_dynamic"])


# -- architectures --------------------------------------------------------------------
def arch_for_capability(capability: tuple[int, int]) -> str:
    """The arch compressc builds for a device: "sm_90a" for (9, 0), "sm_100a" for (10, 0)."""
    major, minor = capability
    return f"sm_{major}{minor}" + ("a" if major >= 9 else "")


def arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether SASS for `arch` runs on a device of `capability`.

    "a" targets run on exactly that chip, "f" targets on later minors of the same
    major, plain targets on the same major with an equal or later minor.
    """
    match = _ARCH_RE.match(arch)
    if match is None:
        raise ValueError(f"arch {arch!r} is not of the form sm_<major><minor>[a|f], e.g. 'sm_90a'")
    major, minor, suffix = int(match[1]), int(match[2]), match[3]
    if suffix == "a":
        return capability == (major, minor)
    return capability[0] == major and capability[1] >= minor


def build_command(spec: KernelSpec, arch: str, pipeline: str = "default") -> str:
    """The `compressc build` command that puts `spec` for `arch` into the user cache.

    It names every axis of the variant (build's variant options accept each one).
    """
    cmd = (
        f"compressc build --arch {arch} --spec {spec.kernel} --head-size {spec.head} "
        f"--quant-block {spec.quant_block} --weight-dtype {spec.weight_dtype}"
    )
    cmd = cmd if spec.rope == 64 else f"{cmd} --rope {spec.rope}"
    first = (formats_for(spec.kernel) or [""])[0]
    cmd = cmd if spec.cache_format == first else f"{cmd} --cache-format {spec.cache_format}"
    cmd = f"{cmd} --indexer {spec.indexer}" if spec.indexer else cmd
    cmd = f"{cmd} --rotate" if spec.rotate else cmd
    cmd = cmd if spec.state_layout == "paged" else f"{cmd} --state-layout {spec.state_layout}"
    cmd = f"{cmd} --bounds" if spec.bounds else cmd
    return cmd if pipeline == "default" else f"{cmd} -p {pipeline}"


def kernel_wheel(arch: str) -> str:
    """The kernel-pack distribution that ships `arch`'s kernels ("compressc-kernels-sm90")."""
    from compressc.packs.wheel import pack_name

    try:
        return pack_name([arch]).dist
    except ValueError:  # an arch no pack is named after: say which pattern to look for
        return f"compressc-kernels-{arch.replace('_', '')}"


# -- where to look ----------------------------------------------------------------------
def iter_pack_roots() -> list[Path]:
    """Directories of the installed kernel packs (entry-point group "compressc.kernel_packs").

    An entry point may resolve to a path (str or PathLike), a module (its directory)
    or a callable returning either. A pack that fails to load is skipped with a warning.
    """
    roots = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            roots.append(_checked_pack(_pack_dir(ep.load())))
        except Exception as exc:  # a broken third-party pack must not break the others
            warnings.warn(f"compressc: kernel pack {ep.name!r} ({ep.value}) skipped: {exc}", stacklevel=2)
    return roots


_ROOTS: dict[tuple, list[Path]] = {}  # what sys.path looked like -> its pack roots


def installed_pack_roots() -> list[Path]:
    """`iter_pack_roots()`, discovered again only when a sys.path entry or its modification
    time changed (installing or removing a package adds or removes a directory there, as
    importlib.metadata's own cache assumes), so the ops' later lookups cost a few stat calls."""
    state = (iter_pack_roots, *(_mtime(p) for p in sys.path))
    roots = _ROOTS.get(state)
    if roots is None:
        roots = iter_pack_roots()
        _ROOTS.clear()
        _ROOTS[state] = roots
    return list(roots)


def _mtime(path: str) -> tuple[str, int]:
    try:
        return path, os.stat(path or ".").st_mtime_ns
    except OSError:
        return path, -1


def _checked_pack(root: Path) -> Path:
    """`root`, after checking its pack index allows this compressc version (packs/installed.py)."""
    from compressc.packs.installed import check_pack

    check_pack(root)
    return root


def _pack_dir(obj: object) -> Path:
    if isinstance(obj, ModuleType):
        return Path(obj.__file__ or "").parent
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj)
    if callable(obj):
        return _pack_dir(obj())
    raise TypeError(f"entry point resolved to {type(obj).__name__}, expected a directory path")


def runtime_settings() -> tuple[Path, bool]:
    """(user cache dir, JIT allowed), from compressc.config (which has no dependencies)."""
    return settings_from_environ(os.environ)


def settings_from_environ(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """COMPRESSC_CACHE_DIR (default $XDG_CACHE_HOME/compressc or ~/.cache/compressc), COMPRESSC_NO_JIT."""
    from compressc.config import Config

    config = Config.from_env(environ)
    return config.cache_dir, not config.no_jit


# -- manifests ------------------------------------------------------------------------
def check_manifest(spec: KernelSpec, arch: str, manifest: dict[str, Any]) -> None:
    """Raise ManifestError unless `manifest` is a launchable entry of `spec` for `arch`."""
    want_params = [[p.name, p.kind, p.dtype, p.align] for p in abi(spec)]
    got_params = [
        [q.get("name"), q.get("kind"), q.get("dtype"), q.get("align")] for q in manifest.get("params", [])
    ]
    expected = {
        "format": MANIFEST_FORMAT,
        "kernel": spec.kernel,
        "variant": spec.variant,
        "arch": arch,
        "params": want_params,
    }
    got = dict(manifest, params=got_params)
    for field, want in expected.items():
        if got.get(field) != want:
            raise ManifestError(f"manifest field {field!r} is {got.get(field)!r}, expected {want!r}")
    grid = manifest.get("grid")
    problem = grid_rule_problem(grid) if isinstance(grid, str) else "expected a launch rule string"
    if problem is not None:
        raise ManifestError(f"manifest field 'grid' is {grid!r}: {problem}")
    block = manifest.get("block")
    if not (isinstance(block, list) and len(block) == 3 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ManifestError(f"manifest field 'block' is {block!r}, expected three positive ints")
    for field in ("entry", "key"):
        if not isinstance(manifest.get(field), str) or not manifest[field]:
            raise ManifestError(
                f"manifest field {field!r} is {manifest.get(field)!r}, expected a non-empty string"
            )
    if not isinstance(manifest.get("smem_dynamic"), int) or manifest["smem_dynamic"] < 0:
        raise ManifestError(
            f"manifest field 'smem_dynamic' is {manifest.get('smem_dynamic')!r}, expected an int >= 0"
        )


def check_image(image: KernelImage) -> None:
    """ManifestError unless the cubin's own .nv.info agrees with the manifest's entry name,
    block and parameter layout (the check the build makes before publishing)."""
    from compressc.cache.integrity import cubin_problem

    problem = cubin_problem(image.manifest, image.cubin)
    if problem is not None:
        raise ManifestError(
            f"{image.origin}: {problem}; run `compressc cache verify --repair` (the cache) "
            "or reinstall the kernel pack"
        )


def read_entry_dir(path: Path) -> tuple[dict[str, Any], bytes]:
    """(manifest, cubin) of an entry directory written by the store or the build driver."""
    manifest = json.loads((path / "manifest.json").read_text())
    return manifest, (path / manifest.get("cubin", "kernel.cubin")).read_bytes()


# -- lookup -----------------------------------------------------------------------------
def open_store(root: Path, readonly: bool = True) -> Any:
    """The Store at `root` (imported here so resolve.py imports without it).

    A root with a pack index (pack.json) opens as a PackStore, whose tampered entries
    raise TamperedPackError naming the pack and the file instead of being misses.
    """
    from compressc.cache.store import Store
    from compressc.packs.installed import PackStore, is_pack

    return PackStore(root) if is_pack(root) else Store(root, readonly=readonly)


def find_kernel(
    spec: KernelSpec,
    arch: str,
    *,
    pack_roots: Sequence[Path] | None = None,
    cache_dir: Path | None = None,
    allow_jit: bool | None = None,
    store_factory: Callable[[Path], Any] = open_store,
    builder: Callable[[KernelSpec, str], Any] | None = None,
    pipeline: str = "default",
) -> KernelImage:
    """The kernel image of `spec` for `arch`, searched in the order of docs/architecture.md §4.

    Arguments left as None come from the installed packs and `runtime_settings()`;
    `builder` defaults to `compressc.driver.build.build_one` when it can be imported.
    `pipeline`: the build to serve (the ops always serve "default"; benchmarks ask for
    "baseline" or "derived" builds by name).
    """
    if cache_dir is None or allow_jit is None:
        env_cache, env_jit = runtime_settings()
        cache_dir = env_cache if cache_dir is None else cache_dir
        allow_jit = env_jit if allow_jit is None else allow_jit
    roots = list(installed_pack_roots() if pack_roots is None else pack_roots)
    sources = [(f"kernel pack {r}", Path(r)) for r in roots] + [(f"user cache {cache_dir}", Path(cache_dir))]
    notes: list[str] = []
    for origin, root in sources:
        image = _from_store(spec, arch, origin, root, store_factory, notes, pipeline)
        if image is not None:
            return image
    return _jit_or_raise(spec, arch, Path(cache_dir), allow_jit, builder, notes, pipeline)


def _from_store(
    spec: KernelSpec, arch: str, origin: str, root: Path, factory: Callable[[Path], Any], notes: list[str],
    pipeline: str = "default",
) -> KernelImage | None:
    if not root.is_dir():
        notes.append(f"{origin}: no such directory")
        return None
    try:
        pack = origin.startswith("kernel pack")
        entry = served_entry(factory(root), spec, arch, pack=pack, pipeline=pipeline)
        if entry is None:
            notes.append(f"{origin}: not found")
            return None
        image = KernelImage(dict(entry.manifest), entry.cubin_bytes(), f"{origin} ({entry.path})")
        check_manifest(spec, arch, image.manifest)
    except _entry_errors() as exc:  # a corrupt or stale entry is a miss
        notes.append(f"{origin}: entry rejected: {exc}")
        if type(exc).__name__ == "TamperedPackError":  # say so even if a later source has the kernel
            warnings.warn(f"compressc: {exc}", stacklevel=3)
        return None
    return image


def served_entry(store: Any, spec: KernelSpec, arch: str, *, pack: bool, pipeline: str = "default") -> Any:
    """The entry of `store` that is this compressc's `pipeline` build of (spec, arch), or None.

    Candidates, first that is the wanted build wins: the entry of the wanted key (the
    user cache, where the toolchain is known: found even when its index file is lost),
    the entry the index names, and (no toolchain here) any entry of the variant@arch.
    StaleEntryError, naming what differs, when there are candidates but none is wanted.
    """
    from compressc.packs.wanted import packed_wanted, stale_reason, wanted_build

    # a pack records what this compressc serves (when it is this compressc): no compiler import
    want = packed_wanted(store.root, spec, arch, pipeline) if pack and hasattr(store, "root") else None
    want, exact = want or wanted_build(spec, arch, pipeline), not pack
    first_reason = None
    for entry in _candidates(store, spec, arch, want.key if exact else None, scan=exact and want.key is None):
        reason = stale_reason(want, entry, exact=exact)
        if reason is None:
            return entry
        first_reason = first_reason or f"{entry.path} is not the build this compressc serves: {reason}"
    if first_reason:
        raise StaleEntryError(first_reason)
    return None


def _candidates(store: Any, spec: KernelSpec, arch: str, key: str | None, scan: bool) -> Iterator[Any]:
    """Entries that may be the wanted build, cheapest first (each costs a cubin hash)."""
    if key is not None:
        yield from filter(None, [store.get(key)])
    yield from filter(None, [store.find(spec.variant, arch)])
    if scan and hasattr(store, "entries"):  # no index and no toolchain: look at every entry
        label = (spec.variant, arch)
        yield from (e for e in store.entries() if (e.manifest["variant"], e.manifest["arch"]) == label)


def _entry_errors() -> tuple[type[Exception], ...]:
    """What reading one store entry raises when the entry is unusable (evaluated on error only)."""
    from compressc.cache.store import StoreError

    return (OSError, ValueError, KeyError, StoreError)


def _jit_or_raise(
    spec: KernelSpec, arch: str, cache_dir: Path, allow_jit: bool, builder: Callable | None, notes: list[str],
    pipeline: str = "default",
) -> KernelImage:
    hint = f"Build it with:\n  {build_command(spec, arch, pipeline)}"
    if not allow_jit:
        notes.append("JIT build: disabled (COMPRESSC_NO_JIT is set)")
        hint = f"Install the prebuilt kernels:\n  pip install {kernel_wheel(arch)}\nor build it with:\n  " + (
            build_command(spec, arch, pipeline))
        raise KernelNotFoundError(_not_found(spec, arch, notes, hint))
    unavailable = _build_unavailable_errors()
    started = time.perf_counter()
    try:
        result = (builder or _default_builder(cache_dir, pipeline))(spec, arch)
        image = _image_from_build(result)
    except unavailable as exc:
        notes.append(f"JIT build: impossible, the build extra is not installed ({type(exc).__name__}: {exc})")
        hint += f"\nor install the build extra to compile kernels on first use:\n  {BUILD_EXTRA_INSTALL}"
        raise KernelNotFoundError(_not_found(spec, arch, notes, hint)) from exc
    check_manifest(spec, arch, image.manifest)
    # A first launch that compiles takes seconds: say so, once, where logging is on.
    log.info(
        "compressc: no prebuilt %s for %s, compiled it at run time in %.1f s; stored in %s",
        spec.variant,
        arch,
        time.perf_counter() - started,
        getattr(result, "path", result),
    )
    return image


def _default_builder(cache_dir: Path, pipeline: str = "default") -> Callable[[KernelSpec, str], Any]:
    """compressc.driver.build.build_one, publishing into the user cache searched above; it waits
    COMPRESSC_LOCK_TIMEOUT seconds at most for another process building the same kernel."""
    from compressc.config import Config
    from compressc.driver.build import build_one

    def build(spec: KernelSpec, arch: str) -> Any:
        store = open_store(cache_dir, readonly=False)
        store.lock_timeout = Config.from_env().lock_timeout
        return build_one(spec, arch, pipeline=pipeline, store=store)

    return build


def _build_unavailable_errors() -> tuple[type[Exception], ...]:
    """What a JIT build raises when its toolchain (CuTe DSL) is not installed."""
    try:
        from compressc.driver.compile import ToolchainError
    except ImportError:
        return (ImportError,)
    return (ImportError, ToolchainError)


def _image_from_build(result: Any) -> KernelImage:
    """Accept what the build driver returns: a store Entry or an entry directory."""
    if hasattr(result, "manifest") and hasattr(result, "cubin_bytes"):
        return KernelImage(
            dict(result.manifest), result.cubin_bytes(), f"JIT build ({getattr(result, 'path', '')})"
        )
    manifest, cubin = read_entry_dir(Path(result))
    return KernelImage(manifest, cubin, f"JIT build ({result})")


def _not_found(spec: KernelSpec, arch: str, notes: Iterable[str], hint: str) -> str:
    searched = "\n".join(f"  - {n}" for n in notes)
    return f"no compressc kernel {spec.variant} for {arch}.\nSearched:\n{searched}\n{hint}"
