"""The runtime serves only this compressc's default build, and stores repair themselves
(issue 17, items 1, 2 and 4), on really built entries (one default, one baseline build)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from compressc.cache.integrity import seal
from compressc.cache.store import Entry, Store
from compressc.cli import main
from compressc.driver import compile as compile_module
from compressc.driver import plan as plan_module
from compressc.driver.build import build_plans
from compressc.driver.compile import ToolchainError
from compressc.driver.plan import plan_many
from compressc.packs import wanted
from compressc.packs.wanted import wanted_build
from compressc.runtime.resolve import KernelNotFoundError, ManifestError, check_image, find_kernel
from compressc.specs import make_spec

SPEC = make_spec("c128a_store", weight_dtype="bf16")
ARCH = "sm_90a"
ONE = ["--arch", "sm90", "--spec", "c128a_store", "--head-size", "512", "--quant-block", "64",
       "--weight-dtype", "bf16", "-j", "1"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Entry, Entry]:
    """A cache holding the default build and a `-p baseline` build of SPEC (two compiles)."""
    if importlib.util.find_spec("cutlass") is None:
        pytest.skip("building kernels needs compressc[build]")
    root = tmp_path_factory.mktemp("template")
    (default,) = plan_many([SPEC], [ARCH])
    (baseline,) = plan_many([SPEC], [ARCH], "baseline")
    results = build_plans([default, baseline], Store(root), workers=2)
    assert all(isinstance(results[p.key], Entry) for p in (default, baseline)), results
    return root, results[default.key], results[baseline.key]


@pytest.fixture
def cache(template, tmp_path) -> Path:
    return Path(shutil.copytree(template[0], tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _fresh_wanted():
    wanted_build.cache_clear()
    yield
    wanted_build.cache_clear()


def lookup(cache: Path):
    return find_kernel(SPEC, ARCH, pack_roots=[], cache_dir=cache, allow_jit=False)


def point(cache: Path, entry: Entry) -> None:
    """What an older compressc's `build -p baseline` (or a hand edit) left: the index names `entry`."""
    (cache / "index" / f"{SPEC.variant}@{ARCH}.json").write_text(json.dumps({"key": entry.key}))


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def no_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel-pack user: the build toolchain's versions are unknown."""
    def missing():
        raise ToolchainError("nvidia-cutlass-dsl is not installed")

    monkeypatch.setattr(compile_module, "toolchain_fingerprint", missing)


# -- item 1: never a stale or foreign kernel -------------------------------------------------
def test_the_baseline_build_is_never_served_to_a_default_request(cache, template, monkeypatch):
    _, default, baseline = template
    point(cache, baseline)
    assert lookup(cache).key == default.key  # found by its key, whatever the index says
    no_toolchain(monkeypatch)
    wanted_build.cache_clear()
    assert lookup(cache).key == default.key  # index entry rejected, the default one found
    shutil.rmtree(cache / default.key[:2] / default.key)  # only the baseline build is left
    with pytest.raises(KernelNotFoundError) as err:
        lookup(cache)
    assert f"{cache / baseline.key[:2] / baseline.key} is not the build this compressc serves: built with " \
        f"pipeline {repr(baseline.manifest['pipeline'])[:60]}... (sha256 " in str(err.value)


def test_a_baseline_build_is_served_when_asked_for_by_name(cache, template, monkeypatch):
    """What benchmarks/bench.py does with a directory built with `-p baseline`."""
    _, default, baseline = template
    image = find_kernel(SPEC, ARCH, pack_roots=[], cache_dir=cache, allow_jit=False, pipeline="baseline")
    assert image.key == baseline.key
    no_toolchain(monkeypatch)
    wanted_build.cache_clear()
    image = find_kernel(SPEC, ARCH, pack_roots=[], cache_dir=cache, allow_jit=False, pipeline="baseline")
    assert image.key == baseline.key and lookup(cache).key == default.key
    with pytest.raises(KernelNotFoundError, match=r"--weight-dtype bf16 -p derived$"):  # none built
        find_kernel(SPEC, ARCH, pack_roots=[], cache_dir=cache, allow_jit=False, pipeline="derived")


def test_the_baseline_build_does_not_take_the_index(template):
    _, default, baseline = template
    assert Store(template[0]).indexed_key(SPEC.variant, ARCH) == default.key
    assert baseline.manifest["pipeline"] != default.manifest["pipeline"]


@pytest.mark.parametrize("ingredient", ["compressc_version", "source_fingerprint"])
def test_an_upgrade_or_a_source_edit_is_not_served(cache, ingredient, monkeypatch):
    if ingredient == "compressc_version":
        monkeypatch.setattr(plan_module, "__version__", "0.2.0")
    else:
        monkeypatch.setattr(plan_module, "source_fingerprint", lambda: "f" * 64)
    with pytest.raises(KernelNotFoundError) as err:
        lookup(cache)
    assert "entry rejected" in str(err.value) and f"built with {ingredient} '" in str(err.value)
    no_toolchain(monkeypatch)  # a pack user's check, on the recorded ingredients
    wanted_build.cache_clear()
    with pytest.raises(KernelNotFoundError, match=f"built with {ingredient} '"):
        lookup(cache)


def test_a_later_plain_build_restores_the_default(cache, template):
    _, default, baseline = template
    point(cache, baseline)
    result = cli("build", *ONE, "--out", str(cache))
    assert result.exit_code == 0, result.output
    assert re.search(r"│ c128a_store_h512_q64_r64_bf16 .*│ restored │", result.output)
    assert Store(cache).indexed_key(SPEC.variant, ARCH) == default.key


# -- item 2: an entry without its index is repaired ------------------------------------------
def test_an_entry_without_its_index_is_found_built_and_repaired(cache, template, monkeypatch):
    _, default, _ = template
    index = cache / "index" / f"{SPEC.variant}@{ARCH}.json"
    index.unlink()  # killed between the entry's rename and the index write
    assert lookup(cache).key == default.key  # the wanted key needs no index
    no_toolchain(monkeypatch)
    wanted_build.cache_clear()
    assert lookup(cache).key == default.key  # nor does the pack user's scan
    monkeypatch.undo()
    result = cli("build", *ONE, "--out", str(cache))
    assert re.search(r"│ c128a_store_h512_q64_r64_bf16 .*│ restored │", result.output), result.output
    assert Store(cache).indexed_key(SPEC.variant, ARCH) == default.key


def test_verify_repair_fixes_index_temps_and_a_bad_index_file(cache, template):
    _, default, _ = template
    (cache / "index" / f"{SPEC.variant}@{ARCH}.json").write_text("{not json")
    (cache / "index" / "gone_h1_q1_r64_bf16@sm_90a.json").write_text(json.dumps({"key": "0" * 64}))
    (cache / "tmp").mkdir(exist_ok=True)
    (cache / "tmp" / f"entry.999999.{default.key}.0badc0de").mkdir()  # no such pid
    before = cli("cache", "verify", "--cache-dir", str(cache))
    assert before.exit_code == 1 and "3 problem(s)" in before.output, before.output
    result = cli("cache", "verify", "--repair", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    assert f"repaired: index {SPEC.variant}@{ARCH} now names {default.key}" in result.output
    assert "repaired: removed" in result.output and result.output.endswith(f"2 entries OK in {cache}\n")
    assert Store(cache).indexed_key(SPEC.variant, ARCH) == default.key
    assert list((cache / "tmp").iterdir()) == []


def test_an_edited_arch_is_rebuilt_by_build_and_removed_by_repair(cache, template):
    _, default, _ = template
    path = cache / default.key[:2] / default.key / "manifest.json"
    path.write_text(json.dumps(seal(dict(default.manifest, arch="sm_100a"))))  # edited, even resealed
    assert Store(cache).problem(default.key).startswith("tampered: the manifest says arch 'sm_100a'")
    result = cli("cache", "verify", "--repair", "--cache-dir", str(cache))
    assert f"repaired: removed {path.parent}: tampered: the manifest says arch 'sm_100a'" in result.output
    assert Store(cache).get(default.key) is None


# -- item 4: launch fields against the cubin's own .nv.info -----------------------------------
def test_a_resealed_block_edit_is_caught_by_the_cubin_itself(cache, template):
    _, default, _ = template
    block = [2 * default.manifest["block"][0], 1, 1]
    edited = seal(dict(default.manifest, block=block))
    path = cache / default.key[:2] / default.key / "manifest.json"
    path.write_text(json.dumps(edited))
    image = lookup(cache)  # sealed consistently: only the cubin can tell
    with pytest.raises(ManifestError) as err:
        check_image(image)
    assert "tampered: the cubin's .nv.info disagrees with the manifest: entry" in str(err.value)
    assert f"requires block {default.manifest['block']}, the manifest says {block}" in str(err.value)
    for command in (["cache", "verify"], ["inspect"]):
        result = cli(*command, "--cache-dir", str(cache))
        assert result.exit_code == 1 and f"the manifest says {block}" in result.output, result.output


def test_a_toolchain_upgrade_is_not_served_where_the_toolchain_is_known(cache, template, monkeypatch):
    real = compile_module.toolchain_fingerprint()
    monkeypatch.setattr(compile_module, "toolchain_fingerprint", lambda: dict(real, nvjitlink="99.0"))
    with pytest.raises(KernelNotFoundError) as err:
        lookup(cache)
    expected = "not the build this compressc serves: built with another toolchain than the one installed here"
    assert expected in str(err.value)


def test_an_entry_without_key_json_is_not_served_to_a_pack_user(cache, template, monkeypatch):
    _, default, _ = template
    (cache / default.key[:2] / default.key / "key.json").unlink()
    no_toolchain(monkeypatch)
    with pytest.raises(KernelNotFoundError, match=r"it has no key.json \(built by an older compressc\)"):
        lookup(cache)


def test_ls_and_inspect_mark_the_build_the_runtime_serves(cache, template):
    _, default, baseline = template
    point(cache, baseline)  # the index names the baseline build; the runtime serves the default one
    listing = cli("cache", "ls", "--cache-dir", str(cache))
    lines = listing.output.splitlines()
    rows = {key: line for line in lines for key in (default.key, baseline.key) if key in line}
    assert rows[default.key].rstrip(" │").endswith("*") and not rows[baseline.key].rstrip(" │").endswith("*")
    shown = cli("inspect", "--cache-dir", str(cache))
    used = [line for line in shown.output.splitlines() if "*" in line and SPEC.variant in line]
    assert len(used) == 1 and default.key[:12] in used[0], shown.output


# -- the pack's wanted.json: what this compressc serves, without importing the compiler -----------
def _as_pack(cache: Path, baseline_index: bool = False) -> Path:
    """`cache` with a wanted.json as `compressc wheel` writes one (no pack.json: a plain root)."""
    (cache / wanted.WANTED_FILE).write_text(json.dumps(wanted.wanted_file([(SPEC, ARCH)])))
    return cache


def _pack_lookup(root: Path):
    return find_kernel(SPEC, ARCH, pack_roots=[root], cache_dir=root / "no-cache", allow_jit=False)


def test_a_pack_of_this_compressc_is_served_from_its_wanted_json(cache, template, monkeypatch):
    _, default, baseline = template
    root = _as_pack(cache)
    wanted._packed_builds.cache_clear()
    monkeypatch.setattr(wanted, "wanted_build", lambda *a: pytest.fail("computed the wanted build"))
    assert _pack_lookup(root).key == default.key
    point(root, baseline)  # the recorded default build still refuses the baseline build
    with pytest.raises(KernelNotFoundError, match="not the build this compressc serves: built with pipeline"):
        _pack_lookup(root)


@pytest.mark.parametrize("change", ["fingerprint", "format"])
def test_a_wanted_json_of_another_compressc_is_not_trusted(cache, template, monkeypatch, change):
    _, default, _ = template
    root = _as_pack(cache)
    data = json.loads((root / wanted.WANTED_FILE).read_text())
    data[change] = "0" * 64 if change == "fingerprint" else 2
    data["builds"][f"{SPEC.variant}@{ARCH}"]["pipeline"] = "forged"  # would refuse the default build
    (root / wanted.WANTED_FILE).write_text(json.dumps(data))
    wanted._packed_builds.cache_clear()
    assert wanted.packed_wanted(root, SPEC, ARCH) is None
    assert _pack_lookup(root).key == default.key  # computed instead: the default build is served


def test_the_served_fingerprint_covers_sources_and_the_tuned_table(monkeypatch, tmp_path):
    from compressc.passes.tuned import TUNED_FILE

    assert wanted.TUNED_TABLE == TUNED_FILE.resolve()
    before = wanted.served_fingerprint()
    table = tmp_path / "tuned.json"
    table.write_text('{"edited": true}')
    monkeypatch.setattr(wanted, "TUNED_TABLE", table)
    wanted.served_fingerprint.cache_clear()
    try:
        assert wanted.served_fingerprint() != before
        monkeypatch.setattr(wanted, "source_fingerprint", lambda: "edited sources")
        wanted.served_fingerprint.cache_clear()
        assert wanted.served_fingerprint() != before
        assert wanted.packed_wanted(tmp_path, SPEC, ARCH, "baseline") is None  # only default builds
    finally:
        wanted.served_fingerprint.cache_clear()
