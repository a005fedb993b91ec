"""`compressc cache ls|verify|prune|clear|why` and `compressc inspect`, on a really built entry."""

from __future__ import annotations

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from compressc.cache.store import Entry, Store
from compressc.cli import main
from compressc.cli.cache import SIZE
from compressc.driver import plan as plan_module
from compressc.driver.build import build_plans
from compressc.driver.plan import plan_many
from compressc.packs.wheel import write_wheel
from compressc.passes.manager import DEFAULT_FETCH
from compressc.runtime import resolve
from compressc.specs import make_spec

SPEC = make_spec("c4a", weight_dtype="bf16")
LABEL = f"{SPEC.variant}@sm_90a"
OTHER_PIPELINE = f"thread-map{{elems-per-lane=4}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Entry]:
    if importlib.util.find_spec("cutlass") is None:
        pytest.skip("building kernels needs compressc[build]")
    cache = tmp_path_factory.mktemp("cache")
    plans = plan_many([SPEC], ["sm90"])
    entry = build_plans(plans, Store(cache), workers=1)[plans[0].key]
    assert isinstance(entry, Entry), entry
    return cache, entry


@pytest.fixture
def cache(built, tmp_path) -> Path:
    """A private copy of the built cache, for commands that change it."""
    return Path(shutil.copytree(built[0], tmp_path / "cache"))


def run(*args: str, input: str | None = None, env: dict | None = None):
    return CliRunner().invoke(main, list(args), input=input, env=env)


def entry_dir(cache: Path, entry: Entry) -> Path:
    return cache / entry.key[:2] / entry.key


# -- sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size"),
    [("123", 123), ("10MB", 10**7), ("1GiB", 2**30), ("1.5KiB", 1536), ("512K", 2**19), ("2 mb", 2 * 10**6)],
)
def test_sizes(text, size):
    assert SIZE.convert(text, None, None) == size


def test_bad_size_is_a_one_line_usage_error(cache):
    result = run("cache", "prune", "--max-size", "10XB", "--cache-dir", str(cache))
    assert (
        result.exit_code == 2
        and "'10XB' is not a size: give bytes, or a number with KB/MB/GB" in result.output
    )
    with pytest.raises(click.BadParameter):
        SIZE.convert("lots", None, None)


# -- ls, verify -----------------------------------------------------------------------------
def test_ls_lists_entries_and_honours_the_environment(built):
    cache, entry = built
    for result in (
        run("cache", "ls", "--cache-dir", str(cache)),
        run("cache", "ls", env={"COMPRESSC_CACHE_DIR": str(cache)}),
    ):
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if entry.key in line)
        assert SPEC.variant in row and "sm_90a" in row and "KiB" in row and "*" in row
        assert "1 entries" in result.output


def test_verify_names_each_bad_entry(cache, built):
    ok = run("cache", "verify", "--cache-dir", str(cache))
    assert ok.exit_code == 0 and f"1 entries OK in {cache}" in ok.output
    cubin = entry_dir(cache, built[1]) / "kernel.cubin"
    cubin.write_bytes(cubin.read_bytes()[:-1] + bytes([cubin.read_bytes()[-1] ^ 1]))
    bad = run("cache", "verify", "--cache-dir", str(cache))
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert f"bad {entry_dir(cache, built[1])}: tampered: {cubin} has sha256" in bad.output
    assert f"bad {cache / 'index' / LABEL}.json: index names {built[1].key}" in bad.output
    assert "Error: 2 problem(s), 0 good entries" in bad.output


def test_verify_reports_bad_entries_on_stderr(cache, built):
    cubin = entry_dir(cache, built[1]) / "kernel.cubin"
    cubin.write_bytes(b"x")
    bad = run("cache", "verify", "--cache-dir", str(cache))
    assert bad.exit_code == 1 and bad.stdout == ""
    assert f"bad {entry_dir(cache, built[1])}: tampered: {cubin} has sha256" in bad.stderr


@pytest.mark.parametrize("command", [["cache", "ls"], ["cache", "verify"]])
def test_ls_and_verify_of_a_missing_cache_say_so(tmp_path, command):
    missing = tmp_path / "no-such-cache"
    for result in (
        run(*command, "--cache-dir", str(missing)),
        run(*command, env={"COMPRESSC_CACHE_DIR": str(missing)}),
    ):
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr == (
            f"Error: no kernel cache at {missing}: the path does not exist; build into it with "
            "`compressc build`, or name an existing cache with --cache-dir or COMPRESSC_CACHE_DIR\n"
        )
    assert not missing.exists()
    afile = tmp_path / "file"
    afile.write_text("")
    assert "the path is not a directory" in run(*command, env={"COMPRESSC_CACHE_DIR": str(afile)}).stderr


def test_inspect_of_a_missing_cache_says_so(built, tmp_path, monkeypatch):
    missing = tmp_path / "no-such-cache"
    monkeypatch.setattr(resolve, "iter_pack_roots", lambda: [])
    result = run("inspect", "--cache-dir", str(missing))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: no kernels to list: no kernel pack is installed and the cache {missing} does not exist; "
        "build with `compressc build`, or name the cache with --cache-dir or COMPRESSC_CACHE_DIR\n"
    )
    cache, entry = built
    wheel = write_wheel([entry], ["sm90"], tmp_path / "dist").path
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    pack = tmp_path / "site" / "compressc_kernels_sm90" / "store"
    monkeypatch.setattr(resolve, "iter_pack_roots", lambda: [pack])
    with_pack = run("inspect", "--cache-dir", str(missing))
    assert with_pack.exit_code == 0 and SPEC.variant in with_pack.stdout
    assert with_pack.stderr == f"note: the cache {missing} does not exist; listing the installed packs only\n"


def test_ls_and_verify_json(cache, built):
    entry = built[1]
    listing = run("cache", "ls", "--json", "--cache-dir", str(cache))
    assert listing.exit_code == 0 and listing.stderr == ""
    doc = json.loads(listing.stdout)
    (row,) = doc["entries"]
    assert doc["root"] == str(cache) and doc["bytes"] == row["bytes"] > 0
    assert (row["variant"], row["arch"], row["key"]) == (SPEC.variant, "sm_90a", entry.key) and row["indexed"]
    assert row["path"] == str(entry_dir(cache, entry))
    ok = json.loads(run("cache", "verify", "--json", "--cache-dir", str(cache)).stdout)
    assert ok == {"root": str(cache), "good": 1, "problems": [], "ok": True}
    (entry_dir(cache, entry) / "kernel.cubin").write_bytes(b"x")
    bad = run("cache", "verify", "--json", "--cache-dir", str(cache))
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: 2 problem(s), 0 good entries")
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["good"] == 0
    index = f"{cache / 'index' / LABEL}.json"
    assert [p["path"] for p in doc["problems"]] == [str(entry_dir(cache, entry)), index]
    assert doc["problems"][0]["problem"].startswith("tampered: ")


# -- prune, clear ---------------------------------------------------------------------------
def test_prune_keeps_the_cache_under_a_size(cache, built):
    kept = run("cache", "prune", "--max-size", "1GiB", "--cache-dir", str(cache))
    assert kept.exit_code == 0 and "removed 0 entries" in kept.output and entry_dir(cache, built[1]).is_dir()
    pruned = run("cache", "prune", "--max-size", "10KB", "--cache-dir", str(cache))
    assert (
        pruned.exit_code == 0
        and "removed 1 entries" in pruned.output
        and "holds 0 bytes (limit 9.8 KiB)" in pruned.output
    )
    assert not entry_dir(cache, built[1]).exists() and not list((cache / "index").iterdir())


def test_clear_asks_unless_yes(cache, built):
    declined = run("cache", "clear", "--cache-dir", str(cache), input="n\n")
    assert declined.exit_code == 1 and "delete 1 entries" in declined.output and "Aborted" in declined.output
    assert entry_dir(cache, built[1]).is_dir()
    accepted = run("cache", "clear", "--cache-dir", str(cache), input="y\n")
    assert accepted.exit_code == 0 and not entry_dir(cache, built[1]).exists()
    shutil.copytree(built[0], cache, dirs_exist_ok=True)
    forced = run("cache", "clear", "--yes", "--cache-dir", str(cache))
    assert forced.exit_code == 0 and f"cleared {cache} (1 entries" in forced.output
    assert Store(cache).entries() == []


# -- why ------------------------------------------------------------------------------------
def test_why_hit_prints_every_ingredient(built):
    cache, entry = built
    result = run("cache", "why", "--spec", "c4a", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    assert f"key      {entry.key}" in result.output and f"hit: {entry_dir(cache, entry)}" in result.output
    for name in (
        "key_format",
        "spec_ir",
        "pipeline",
        "arch",
        "options",
        "compressc_version",
        "source_fingerprint",
        "toolchain",
    ):
        assert f"\n  {name} " in result.output
    full = run("cache", "why", "--spec", "c4a", "--full", "--cache-dir", str(cache))
    assert (entry_dir(cache, entry) / "spec.cir").read_text().strip() in full.output


def test_why_miss_names_the_differing_ingredient(built):
    cache, entry = built
    result = run("cache", "why", "--spec", "c4a", "-p", OTHER_PIPELINE, "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    assert "miss: no entry" in result.output and f"nearest entry of {LABEL}: {entry.key}" in result.output
    assert f"differs: pipeline: '{entry.manifest['pipeline']}' -> '{OTHER_PIPELINE}'" in result.output
    assert "source_fingerprint" not in result.output.split("miss:")[1]


def test_why_after_a_source_change(built, monkeypatch):
    cache, entry = built
    recorded = json.loads((entry_dir(cache, entry) / "key.json").read_text())
    monkeypatch.setattr(plan_module, "source_fingerprint", lambda: "0" * 64)
    result = run("cache", "why", "--spec", "c4a", "--cache-dir", str(cache))
    assert f"differs: source_fingerprint: '{recorded['source_fingerprint']}' -> '{'0' * 64}'" in result.output
    assert "differs: pipeline" not in result.output


def test_why_with_an_entry_older_than_key_json(cache, built):
    (entry_dir(cache, built[1]) / "key.json").unlink()
    result = run("cache", "why", "--spec", "c4a", "-p", OTHER_PIPELINE, "--cache-dir", str(cache))
    assert (
        "built before entries recorded key.json: only its manifest's arch, compressc_version, pipeline, "
        "toolchain can be compared" in result.output
    )
    assert "differs: pipeline:" in result.output


def test_why_with_no_entry_of_the_variant(tmp_path):
    result = run("cache", "why", "--spec", "c4a", "--weight-dtype", "f32", "--cache-dir", str(tmp_path))
    assert (
        result.exit_code == 0
        and "no entry of c4a_h512_q64_r64_f32@sm_90a at all; build it with:" in result.output
    )
    assert (
        "compressc build --arch sm_90a --spec c4a --head-size 512 --quant-block 64 --weight-dtype f32"
        in result.output
    )


def test_why_bad_spec_is_one_line(tmp_path):
    result = run("cache", "why", "--spec", "c4a", "--quant-block", "48", "--cache-dir", str(tmp_path))
    assert (
        result.exit_code == 1 and result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
    )


# -- inspect --------------------------------------------------------------------------------
def test_inspect_lists_packs_then_the_cache(built, tmp_path, monkeypatch):
    cache, entry = built
    wheel = write_wheel([entry], ["sm90"], tmp_path / "dist").path
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    pack = tmp_path / "site" / "compressc_kernels_sm90" / "store"
    monkeypatch.setattr(resolve, "iter_pack_roots", lambda: [pack])
    result = run("inspect", "--cache-dir", str(cache))
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if SPEC.variant in line]
    assert len(rows) == 2 and "compressc-kernels-sm90 0.1.0" in rows[0] and f"cache {cache}" in rows[1]
    assert all(entry.key[:12] in r and entry.manifest["cubin_sha256"][:12] in r for r in rows)
    assert "*" in rows[0] and "*" not in rows[1]  # the pack wins
    assert str(entry.manifest["registers"]) in rows[0] and "2 kernels from 1 pack(s)" in result.output
    none = run("inspect", "--arch", "sm100", "--cache-dir", str(cache))
    assert none.exit_code == 0 and "0 kernels" in none.output


def test_inspect_json(built, tmp_path, monkeypatch):
    cache, entry = built
    monkeypatch.setattr(resolve, "iter_pack_roots", lambda: [])
    result = run("inspect", "--json", "--cache-dir", str(cache))
    assert result.exit_code == 0 and result.stderr == ""
    doc = json.loads(result.stdout)
    assert (doc["packs"], doc["cache"], doc["warnings"]) == (0, str(cache), [])
    (row,) = doc["kernels"]
    assert row == {
        "variant": SPEC.variant,
        "arch": "sm_90a",
        "source": f"cache {cache}",
        "path": str(entry_dir(cache, entry)),
        "key": entry.key,
        "cubin_sha256": entry.manifest["cubin_sha256"],
        "registers": entry.manifest["registers"],
        "smem": entry.manifest["smem_static"] + entry.manifest["smem_dynamic"],
        "used": True,
    }


def test_inspect_warns_about_a_tampered_pack(built, tmp_path, monkeypatch):
    cache, entry = built
    wheel = write_wheel([entry], ["sm90"], tmp_path / "dist").path
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    pack = tmp_path / "site" / "compressc_kernels_sm90" / "store"
    cubin = pack / entry.key[:2] / entry.key / "kernel.cubin"
    cubin.write_bytes(b"not a cubin")
    monkeypatch.setattr(resolve, "iter_pack_roots", lambda: [pack])
    result = run("inspect", "--cache-dir", str(cache))
    rows = [line for line in result.output.splitlines() if SPEC.variant in line and "│" in line]
    assert len(rows) == 1 and "*" in rows[0]  # the cache entry is what the runtime uses now
    assert (
        f"warning compressc-kernels-sm90 0.1.0: {cubin.parent}: tampered: {cubin} has sha256" in result.output
    )
