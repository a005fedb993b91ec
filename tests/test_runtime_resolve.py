"""resolve.py: lookup order, manifest checks, pack discovery and the not-found message."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from compressc.cache.integrity import seal
from compressc.runtime import resolve
from compressc.runtime.resolve import (
    KernelNotFoundError,
    ManifestError,
    arch_for_capability,
    arch_runs_on,
    build_command,
    check_manifest,
    find_kernel,
    settings_from_environ,
)
from compressc.specs import make_spec
from compressc.specs.abi import abi

SPEC = make_spec("c4a", 512, 64, weight_dtype="bf16")
ARCH = "sm_90a"
CUBIN = b"\x7fELF fake cubin"


def manifest(spec=SPEC, arch=ARCH, key="ab" + "0" * 62, **changes) -> dict:
    params = [{"name": p.name, "kind": p.kind, "dtype": p.dtype, "align": p.align} for p in abi(spec)]
    base = {
        "format": 1,
        "key": key,
        "compressc_version": "0.1.0",
        "kernel": spec.kernel,
        "variant": spec.variant,
        "arch": arch,
        "entry": f"cutlass_{spec.variant}",
        "params": params,
        "block": [256, 1, 1],
        "grid": "rows",
        "smem_dynamic": 1024,
        "smem_static": 0,
        "registers": 64,
        "spill_stores": 0,
        "spill_loads": 0,
        "stack": 0,
        "barriers": 1,
        "cubin": "kernel.cubin",
        "cubin_sha256": hashlib.sha256(CUBIN).hexdigest(),
        "toolchain": {},
        "pipeline": "default",
        "compile_seconds": 0.5,
    }
    return seal(base | changes)


@dataclass
class FakeEntry:
    manifest: dict
    path: Path
    corrupt: bool = False

    def cubin_bytes(self) -> bytes:
        if self.corrupt:
            raise ValueError("cubin sha256 mismatch")
        return CUBIN


class FakeStores:
    """store_factory stand-in: {root: {(variant, arch): FakeEntry}}."""

    def __init__(self, entries: dict[Path, dict]) -> None:
        self.entries = entries
        self.opened: list[Path] = []

    def __call__(self, root: Path):
        self.opened.append(root)
        table = self.entries.get(root, {})
        return types.SimpleNamespace(find=lambda variant, arch: table.get((variant, arch)))


@pytest.fixture(autouse=True)
def _index_only(monkeypatch):
    """The fake entries here have no key.json: serve what the index names.

    Which build is served (the wanted key) is tested on real stores in test_runtime_served.py.
    """
    def index_only(store, spec, arch, pack, pipeline="default"):
        return store.find(spec.variant, arch)

    monkeypatch.setattr(resolve, "served_entry", index_only)


@pytest.fixture
def roots(tmp_path):
    pack, cache = tmp_path / "pack", tmp_path / "cache"
    pack.mkdir()
    cache.mkdir()
    return pack, cache


def _entry(root: Path, **kw) -> dict:
    return {(SPEC.variant, ARCH): FakeEntry(manifest(**kw), root / "entry", corrupt=kw.pop("corrupt", False))}


# -- architectures and commands --------------------------------------------------------
@pytest.mark.parametrize(
    "cc,arch", [((9, 0), "sm_90a"), ((10, 0), "sm_100a"), ((12, 0), "sm_120a"), ((8, 6), "sm_86")]
)
def test_arch_for_capability(cc, arch):
    assert arch_for_capability(cc) == arch


@pytest.mark.parametrize(
    "arch,cc,ok",
    [
        ("sm_90a", (9, 0), True),
        ("sm_90a", (10, 0), False),
        ("sm_100a", (10, 0), True),
        ("sm_100a", (10, 3), False),
        ("sm_100f", (10, 3), True),
        ("sm_100f", (9, 0), False),
        ("sm_80", (8, 6), True),
        ("sm_80", (9, 0), False),
    ],
)
def test_arch_runs_on(arch, cc, ok):
    assert arch_runs_on(arch, cc) is ok


def test_bad_arch_string():
    with pytest.raises(ValueError, match=r"arch 'hopper' is not of the form sm_<major><minor>\[a\|f\]"):
        arch_runs_on("hopper", (9, 0))


def test_build_command():
    assert build_command(SPEC, ARCH) == (
        "compressc build --arch sm_90a --spec c4a --head-size 512 --quant-block 64 --weight-dtype bf16"
    )
    odd = make_spec("c4a", 512, 32, rope=32, weight_dtype="f32")
    assert build_command(odd, "sm_100a").endswith("--weight-dtype f32 --rope 32")


def test_settings_from_environ(tmp_path):
    assert settings_from_environ({"COMPRESSC_CACHE_DIR": str(tmp_path)}) == (tmp_path, True)
    cache, jit = settings_from_environ({"COMPRESSC_NO_JIT": "1", "HOME": "/x"})
    assert cache.parts[-2:] == (".cache", "compressc") and jit is False
    assert settings_from_environ({"COMPRESSC_NO_JIT": "0"})[1] is True


# -- lookup order -----------------------------------------------------------------------
def test_pack_wins_over_cache(roots):
    pack, cache = roots
    stores = FakeStores({pack: _entry(pack, key="aa" + "1" * 62), cache: _entry(cache)})
    image = find_kernel(SPEC, ARCH, pack_roots=[pack], cache_dir=cache, allow_jit=False, store_factory=stores)
    assert image.key == "aa" + "1" * 62 and image.origin.startswith(f"kernel pack {pack}")
    assert image.cubin == CUBIN and image.block == (256, 1, 1) and image.smem_dynamic == 1024
    assert stores.opened == [pack]


def test_cache_used_when_pack_misses(roots):
    pack, cache = roots
    stores = FakeStores({cache: _entry(cache)})
    image = find_kernel(SPEC, ARCH, pack_roots=[pack], cache_dir=cache, allow_jit=False, store_factory=stores)
    assert image.origin.startswith(f"user cache {cache}") and image.entry == f"cutlass_{SPEC.variant}"


def test_stale_and_corrupt_entries_are_misses(roots):
    pack, cache = roots
    stale = manifest(params=[])
    stores = FakeStores(
        {
            pack: {(SPEC.variant, ARCH): FakeEntry(stale, pack / "e")},
            cache: _entry(cache, corrupt=True),
        }
    )
    with pytest.raises(KernelNotFoundError) as err:
        find_kernel(SPEC, ARCH, pack_roots=[pack], cache_dir=cache, allow_jit=False, store_factory=stores)
    text = str(err.value)
    assert f"kernel pack {pack}: entry rejected: manifest field 'params' is []" in text
    assert f"user cache {cache}: entry rejected: cubin sha256 mismatch" in text


def test_not_found_with_jit_disabled(roots, tmp_path):
    pack, cache = roots
    with pytest.raises(KernelNotFoundError) as err:
        find_kernel(
            SPEC,
            ARCH,
            pack_roots=[pack],
            cache_dir=tmp_path / "nowhere",
            allow_jit=False,
            store_factory=FakeStores({}),
        )
    text = str(err.value)
    assert text.startswith(f"no compressc kernel {SPEC.variant} for sm_90a.")
    assert f"kernel pack {pack}: not found" in text
    assert f"user cache {tmp_path / 'nowhere'}: no such directory" in text
    assert "JIT build: disabled (COMPRESSC_NO_JIT is set)" in text
    assert (
        "compressc build --arch sm_90a --spec c4a --head-size 512 --quant-block 64 --weight-dtype bf16"
        in text
    )
    # with the JIT off, the fix is the kernel wheel of the arch, not the build extra
    assert "Install the prebuilt kernels:\n  pip install compressc-kernels-sm90\nor build it with:" in text
    assert "compressc[build]" not in text


def test_not_found_without_build_extra(roots, monkeypatch):
    _, cache = roots
    monkeypatch.setitem(sys.modules, "compressc.driver.build", None)  # import raises ImportError
    with pytest.raises(KernelNotFoundError) as err:
        find_kernel(SPEC, ARCH, pack_roots=[], cache_dir=cache, allow_jit=True, store_factory=FakeStores({}))
    text = str(err.value)
    assert "JIT build: impossible, the build extra is not installed" in text
    assert "compressc build --arch sm_90a --spec c4a" in text
    assert "pip install 'compressc[build]'" in text


def test_jit_builder_result_is_checked_and_used(roots):
    _, cache = roots
    calls = []

    def builder(spec, arch):
        calls.append((spec.variant, arch))
        return FakeEntry(manifest(), cache / "built")

    image = find_kernel(
        SPEC,
        ARCH,
        pack_roots=[],
        cache_dir=cache,
        allow_jit=True,
        store_factory=FakeStores({}),
        builder=builder,
    )
    assert calls == [(SPEC.variant, ARCH)] and image.origin.startswith("JIT build")


def test_jit_builder_may_return_an_entry_dir(roots, tmp_path):
    _, cache = roots
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "manifest.json").write_text(json.dumps(manifest()))
    (entry / "kernel.cubin").write_bytes(CUBIN)
    image = find_kernel(
        SPEC,
        ARCH,
        pack_roots=[],
        cache_dir=cache,
        allow_jit=True,
        store_factory=FakeStores({}),
        builder=lambda spec, arch: entry,
    )
    assert image.cubin == CUBIN


def test_a_jit_build_is_logged_at_info(roots, tmp_path, caplog):
    _, cache = roots
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "manifest.json").write_text(json.dumps(manifest()))
    (entry / "kernel.cubin").write_bytes(CUBIN)
    with caplog.at_level(logging.INFO, logger="compressc.runtime"):
        find_kernel(SPEC, ARCH, pack_roots=[], cache_dir=cache, allow_jit=True,
                    store_factory=FakeStores({}), builder=lambda spec, arch: entry)
    (record,) = [r for r in caplog.records if r.name == "compressc.runtime"]
    assert record.levelno == logging.INFO
    assert re.fullmatch(
        rf"compressc: no prebuilt {SPEC.variant} for {ARCH}, compiled it at run time in \d+\.\d s; "
        rf"stored in {re.escape(str(entry))}",
        record.getMessage(),
    )


def test_settings_come_from_environment(roots, monkeypatch):
    _, cache = roots
    monkeypatch.setenv("COMPRESSC_CACHE_DIR", str(cache))
    monkeypatch.setenv("COMPRESSC_NO_JIT", "1")
    image = find_kernel(SPEC, ARCH, pack_roots=[], store_factory=FakeStores({cache: _entry(cache)}))
    assert image.origin.startswith(f"user cache {cache}")


# -- manifests --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,message",
    [
        ({"format": 2}, "manifest field 'format' is 2, expected 1"),
        ({"kernel": "c128a_store"}, "manifest field 'kernel' is 'c128a_store', expected 'c4a'"),
        ({"variant": "x"}, "manifest field 'variant' is 'x', expected 'c4a_h512_q64_r64_bf16'"),
        ({"arch": "sm_100a"}, "manifest field 'arch' is 'sm_100a', expected 'sm_90a'"),
        ({"grid": "tokens"}, "manifest field 'grid' is 'tokens': expected 'rows', 'wave:<CTAs per SM>"),
        ({"grid": "wave:8,cluster:3"}, "manifest field 'grid' is 'wave:8,cluster:3': a cluster suffix is"),
        ({"grid": 4}, "manifest field 'grid' is 4: expected a launch rule string"),
        ({"grid": "tiled:4"}, "manifest field 'grid' is 'tiled:4': the launch rule of tiled kernels built"),
        ({"block": [256, 1]}, r"manifest field 'block' is \[256, 1\], expected three positive ints"),
        ({"entry": ""}, "manifest field 'entry' is '', expected a non-empty string"),
        ({"smem_dynamic": -1}, "manifest field 'smem_dynamic' is -1, expected an int >= 0"),
    ],
)
def test_manifest_errors(change, message):
    with pytest.raises(ManifestError, match=message):
        check_manifest(SPEC, ARCH, manifest(**change))


def test_manifest_params_must_match_abi_order():
    m = manifest()
    m["params"][0], m["params"][1] = m["params"][1], m["params"][0]
    with pytest.raises(ManifestError, match="manifest field 'params' is"):
        check_manifest(SPEC, ARCH, m)
    check_manifest(SPEC, ARCH, manifest())


# -- kernel packs -----------------------------------------------------------------------
class _EP:
    def __init__(self, name: str, obj: object) -> None:
        self.name, self.value, self._obj = name, f"pack_{name}:ROOT", obj

    def load(self) -> object:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_iter_pack_roots(monkeypatch, tmp_path):
    module = types.ModuleType("fake_pack")
    module.__file__ = str(tmp_path / "modpack" / "__init__.py")
    eps = [
        _EP("d", ImportError("no module")),
        _EP("c", lambda: tmp_path / "callable"),
        _EP("b", module),
        _EP("a", str(tmp_path / "str")),
    ]
    seen = {}

    def fake_entry_points(*, group):
        seen["group"] = group
        return eps

    monkeypatch.setattr(resolve, "entry_points", fake_entry_points)
    with pytest.warns(UserWarning, match=r"kernel pack 'd' \(pack_d:ROOT\) skipped: no module"):
        roots = resolve.iter_pack_roots()
    assert seen["group"] == "compressc.kernel_packs"
    assert roots == [tmp_path / "str", tmp_path / "modpack", tmp_path / "callable"]


def _write_store_entry(root: Path, m: dict) -> None:
    """The Store layout: index/<variant>@<arch>.json -> {"key"}, <key[:2]>/<key>/ with the files."""
    entry = root / m["key"][:2] / m["key"]
    entry.mkdir(parents=True)
    (entry / "kernel.cubin").write_bytes(CUBIN)
    (entry / "manifest.json").write_text(json.dumps(m))
    (root / "index").mkdir(exist_ok=True)
    (root / "index" / f"{m['variant']}@{m['arch']}.json").write_text(json.dumps({"key": m["key"]}))


def test_real_store_layout_in_a_pack(tmp_path):
    _write_store_entry(tmp_path / "pack", manifest())
    image = find_kernel(
        SPEC, ARCH, pack_roots=[tmp_path / "pack"], cache_dir=tmp_path / "none", allow_jit=False
    )
    assert image.cubin == CUBIN and image.origin.startswith("kernel pack")
