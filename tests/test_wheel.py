"""Kernel-pack wheels: layout, metadata, reproducible bytes, size limit, and the runtime using
an installed pack in a fresh virtual environment without nvidia-cutlass-dsl."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from no_cutlass import NO_CUTLASS

from compressc import __version__
from compressc.cache.store import Entry, Store
from compressc.cli import main
from compressc.driver.build import build_plans
from compressc.driver.plan import plan_many
from compressc.packs.installed import PackError, TamperedPackError, check_pack
from compressc.packs.wheel import WheelError, pack_name, write_wheel, zip_time
from compressc.runtime import resolve
from compressc.runtime.resolve import KernelNotFoundError, find_kernel
from compressc.specs import default_specs, make_spec

REPO = Path(__file__).resolve().parents[1]
SPECS = [make_spec("c4a", weight_dtype="bf16"), make_spec("indexer_fp8", weight_dtype="bf16")]
ARCH = "sm_90a"
WHEEL = f"compressc_kernels_sm90-{__version__}-py3-none-any.whl"
needs_toolchain = pytest.mark.skipif(
    importlib.util.find_spec("cutlass") is None, reason="needs compressc[build]"
)


def build_entries(cache: Path) -> list[Entry]:
    plans = plan_many(SPECS, [ARCH])
    results = build_plans(plans, Store(cache), workers=2)
    entries = [results[p.key] for p in plans]
    assert all(isinstance(e, Entry) for e in entries), entries
    return entries


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[Entry]]:
    if importlib.util.find_spec("cutlass") is None:
        pytest.skip("building kernels needs compressc[build]")
    cache = tmp_path_factory.mktemp("cache")
    return cache, build_entries(cache)


@pytest.fixture(scope="module")
def wheel(built, tmp_path_factory) -> Path:
    return write_wheel(built[1], ["sm90"], tmp_path_factory.mktemp("dist")).path


def extract_pack(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dest)
    return dest / "compressc_kernels_sm90" / "store"


# -- names and layout ---------------------------------------------------------------------
def test_pack_names():
    one, two = pack_name(["sm90"]), pack_name(["sm_100a", "90a", "sm_90a"])
    assert (one.tag, one.dist, one.package) == ("sm90", "compressc-kernels-sm90", "compressc_kernels_sm90")
    assert (two.tag, two.dist, two.package) == (
        "sm90-sm100",
        "compressc-kernels-sm90-sm100",
        "compressc_kernels_sm90_sm100",
    )
    assert pack_name(["sm_100f"]).dist == "compressc-kernels-sm100f"


def test_zip_time():
    assert zip_time(None) == (1980, 1, 1, 0, 0, 0)
    assert zip_time("0") == (1980, 1, 1, 0, 0, 0)  # zip cannot record earlier than 1980
    assert zip_time("1700000000") == (2023, 11, 14, 22, 13, 20)
    with pytest.raises(WheelError, match="SOURCE_DATE_EPOCH='soon' is not a number"):
        zip_time("soon")


def test_wheel_layout_and_metadata(wheel, built):
    assert wheel.name == WHEEL
    entries = built[1]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        read = zf.read
        dist = f"compressc_kernels_sm90-{__version__}.dist-info"
        assert names[-1] == f"{dist}/RECORD" and names == sorted(names[:-5]) + names[-5:]
        assert {f"{dist}/{n}" for n in ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt")} < set(
            names
        )
        meta = read(f"{dist}/METADATA").decode()
        assert (
            "Name: compressc-kernels-sm90\n" in meta and f"Requires-Dist: compressc=={__version__}\n" in meta
        )
        assert "Tag: py3-none-any\n" in read(f"{dist}/WHEEL").decode()
        assert read(f"{dist}/entry_points.txt").decode() == (
            "[compressc.kernel_packs]\nsm90 = compressc_kernels_sm90:ROOT\n"
        )
        # an installed pack names no compressc module, so the driver, store and packs may move
        init = read("compressc_kernels_sm90/__init__.py").decode()
        assert [line for line in init.splitlines() if line.startswith(("import ", "from "))] == ["import os"]
        pack = json.loads(read("compressc_kernels_sm90/store/pack.json"))
        for e in entries:
            prefix = f"compressc_kernels_sm90/store/{e.key[:2]}/{e.key}"
            assert read(f"{prefix}/kernel.cubin") == e.cubin_bytes()
            stages = ("manifest.json", "spec.cir", "kernel_py.txt", "key.json", "jitlink.log")
            assert {f"{prefix}/{n}" for n in stages} < set(names)
            # the PTX stays in the build's cache: a loader never reads it
            assert (e.path / "kernel.ptx").is_file() and f"{prefix}/kernel.ptx" not in names
            index = json.loads(
                read(f"compressc_kernels_sm90/store/index/{e.manifest['variant']}@{ARCH}.json")
            )
            assert index == {"key": e.key}
            assert pack["kernels"][f"{e.manifest['variant']}@{ARCH}"] == {
                "key": e.key,
                "cubin_sha256": e.manifest["cubin_sha256"],
                "launch_sha256": e.manifest["launch_sha256"],
                "compressc_version": __version__,
            }
        assert (pack["name"], pack["compressc_version"], pack["archs"]) == (
            "compressc-kernels-sm90",
            __version__,
            [ARCH],
        )
        assert all(
            i.date_time == (1980, 1, 1, 0, 0, 0) and i.external_attr >> 16 == 0o100644 for i in zf.infolist()
        )


def test_wheel_has_no_python_file_for_pip_to_byte_compile(wheel):
    """pip compiles every installed .py (check-wheel-contents W004): only the package's
    __init__.py may be one; the generated kernel source travels as kernel_py.txt."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"compressc_kernels_sm90-{__version__}.dist-info/METADATA").decode()
    assert [n for n in names if n.endswith(".py")] == ["compressc_kernels_sm90/__init__.py"]
    assert any(n.endswith("/kernel_py.txt") for n in names)
    assert "License: Apache-2.0\n" in meta


def test_legacy_kernel_py_is_packed_under_the_text_name(built, tmp_path):
    entry = built[1][0]
    legacy = tmp_path / entry.key
    legacy.mkdir()
    for path in entry.path.iterdir():
        name = "kernel.py" if path.name == "kernel_py.txt" else path.name
        (legacy / name).write_bytes(path.read_bytes())
    old = Entry(legacy, entry.manifest)
    assert old.text("kernel_py.txt") == entry.text("kernel_py.txt")  # readers see one name
    with zipfile.ZipFile(write_wheel([old], ["sm90"], tmp_path / "dist").path) as zf:
        names = zf.namelist()
    assert f"compressc_kernels_sm90/store/{entry.key[:2]}/{entry.key}/kernel_py.txt" in names
    assert not any(n.endswith("/kernel.py") for n in names)


def test_record_hashes_every_member(wheel):
    with zipfile.ZipFile(wheel) as zf:
        record_name = zf.namelist()[-1]
        rows = list(csv.reader(io.StringIO(zf.read(record_name).decode())))
        assert [r[0] for r in rows] == zf.namelist() and rows[-1] == [record_name, "", ""]
        for name, digest, size in rows[:-1]:
            data = zf.read(name)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (f"sha256={want}", len(data)), name


# -- reproducible bytes, atomic writes, size limit ---------------------------------------------
def test_rewriting_gives_identical_bytes(wheel, built, tmp_path):
    again = write_wheel(built[1], ["sm_90a"], tmp_path).path
    assert again.read_bytes() == wheel.read_bytes()
    stamped = write_wheel(built[1], ["sm_90a"], tmp_path / "s", date_time=zip_time("1700000000")).path
    assert zipfile.ZipFile(stamped).infolist()[0].date_time == (2023, 11, 14, 22, 13, 20)


@needs_toolchain
def test_rebuilding_from_scratch_gives_identical_bytes(wheel, tmp_path):
    """A fresh cache compiles again (another compile_seconds); the wheel must not change."""
    rebuilt = write_wheel(build_entries(tmp_path / "cache"), ["sm90"], tmp_path / "dist").path
    assert rebuilt.read_bytes() == wheel.read_bytes()


def test_max_size_failure_leaves_nothing(built, tmp_path):
    out = tmp_path / "new" / "dist"
    with pytest.raises(WheelError, match=rf"{WHEEL} would be .* above the maximum of 1000 bytes; nothing"):
        write_wheel(built[1], ["sm90"], out, max_size=1000)
    assert not out.exists()
    existing = tmp_path / "dist"
    existing.mkdir()
    (existing / "other.txt").write_text("keep")
    with pytest.raises(WheelError):
        write_wheel(built[1], ["sm90"], existing, max_size=1000)
    assert sorted(p.name for p in existing.iterdir()) == ["other.txt"]


@pytest.mark.parametrize("arch", ["sm90", "sm100"])
def test_default_matrix_wheel_is_under_one_megabyte(arch, tmp_path):
    """Issue 14: the pack of every shipped kernel stays under 1 MB (10**6 bytes) per arch.
    `--max-size 1MB` is the same limit through the CLI: it refuses to write a larger wheel."""
    if importlib.util.find_spec("cutlass") is None:
        pytest.skip("building kernels needs compressc[build]")
    args = ["wheel", "--arch", arch, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "d")]
    result = CliRunner().invoke(main, args + ["-j", "2", "--max-size", "1MB"])
    assert result.exit_code == 0, result.output
    (whl,) = (tmp_path / "d").iterdir()
    with zipfile.ZipFile(whl) as zf:
        cubins = [n for n in zf.namelist() if n.endswith("/kernel.cubin")]
    assert whl.stat().st_size < 10**6 and len(cubins) == len(default_specs()) > 20


def test_refuses_entries_of_another_arch_or_duplicates(built, tmp_path):
    with pytest.raises(WheelError, match="entries for sm_90a, which is not among the pack's archs"):
        write_wheel(built[1], ["sm100"], tmp_path)
    with pytest.raises(WheelError, match="two entries for c4a_h512_q64_r64_bf16@sm_90a"):
        write_wheel([built[1][0], built[1][0]], ["sm90"], tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_wheel_reuses_the_cache(built, wheel, tmp_path):
    cache, _ = built
    args = ["wheel", "--arch", "sm90", "--cache-dir", str(cache), "--out", str(tmp_path / "d")]
    result = CliRunner().invoke(main, args + ["--spec", "c4a", "--weight-dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert (
        f"{tmp_path / 'd' / WHEEL}  " in result.output
        and "(1 kernels for sm_90a, 0 compiled now)" in result.output
    )
    small = CliRunner().invoke(main, args + ["--spec", "c4a", "--weight-dtype", "bf16", "--max-size", "10KB"])
    assert small.exit_code == 1 and "above the maximum of 9.8 KiB; nothing was written" in small.output
    assert "Traceback" not in small.output and [p.name for p in (tmp_path / "d").iterdir()] == [WHEEL]


# -- the runtime side, in this process -----------------------------------------------------------
def test_extracted_pack_resolves_and_wins(wheel, built, tmp_path):
    root = extract_pack(wheel, tmp_path)
    for spec, entry in zip(SPECS, built[1], strict=True):
        image = find_kernel(spec, ARCH, pack_roots=[root], cache_dir=built[0], allow_jit=False)
        assert image.origin.startswith(f"kernel pack {root}") and image.key == entry.key
        assert image.cubin == entry.cubin_bytes()


def test_tampered_pack_cubin_is_refused(wheel, built, tmp_path):
    root = extract_pack(wheel, tmp_path)
    cubin = root / built[1][0].key[:2] / built[1][0].key / "kernel.cubin"
    data = bytearray(cubin.read_bytes())
    data[100] ^= 0xFF
    cubin.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="kernel pack compressc-kernels-sm90"):
        with pytest.raises(KernelNotFoundError) as err:
            find_kernel(SPECS[0], ARCH, pack_roots=[root], cache_dir=tmp_path / "none", allow_jit=False)
    text = str(err.value)
    assert f"kernel pack compressc-kernels-sm90 {__version__}: tampered: {cubin} has sha256" in text
    assert f"reinstall it: pip install --force-reinstall 'compressc-kernels-sm90=={__version__}'" in text
    with pytest.warns(UserWarning, match="tampered"):  # the user cache still serves the kernel
        image = find_kernel(SPECS[0], ARCH, pack_roots=[root], cache_dir=built[0], allow_jit=False)
    assert image.origin.startswith("user cache")
    with pytest.raises(TamperedPackError):
        resolve.open_store(root).find(SPECS[0].variant, ARCH)


def test_resealed_pack_manifest_is_refused(wheel, built, tmp_path):
    """A launch field edited and resealed in the manifest: pack.json's seal still differs."""
    from compressc.cache.integrity import seal

    root = extract_pack(wheel, tmp_path)
    path = root / built[1][0].key[:2] / built[1][0].key / "manifest.json"
    path.write_text(json.dumps(seal(dict(json.loads(path.read_text()), smem_dynamic=1 << 16))))
    with pytest.raises(TamperedPackError) as err:
        resolve.open_store(root).find(SPECS[0].variant, ARCH)
    assert f"the launch fields of {path} do not match {root / 'pack.json'}" in str(err.value)


def test_pack_of_another_compressc_version_is_skipped(wheel, tmp_path, monkeypatch):
    root = extract_pack(wheel, tmp_path)
    info = json.loads((root / "pack.json").read_text())
    (root / "pack.json").write_text(json.dumps(info | {"compressc_version": "0.0.9"}))
    with pytest.raises(PackError, match=rf"built for compressc '0.0.9', this is compressc {__version__}"):
        check_pack(root)

    class EP:
        name, value = "sm90", "compressc_kernels_sm90:ROOT"

        def load(self):
            return str(root)

    monkeypatch.setattr(resolve, "entry_points", lambda group: [EP()])
    with pytest.warns(
        UserWarning, match=r"kernel pack 'sm90' .* skipped: .*pip install 'compressc-kernels-sm90"
    ):
        assert resolve.iter_pack_roots() == []


# -- the runtime side, installed in a fresh venv without cutlass ---------------------------------

_USE_PACK = """
import hashlib, json, sys, warnings
from compressc.runtime.resolve import KernelNotFoundError, find_kernel, iter_pack_roots
from compressc.specs import default_specs, make_spec
try:
    import cutlass
    sys.exit("cutlass is importable")
except ImportError:
    pass
specs, cache, empty = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
(root,) = iter_pack_roots()
kernels = json.loads((root / "pack.json").read_text())["kernels"]
found = {}


def look(spec, cache_dir):
    try:
        image = find_kernel(spec, "sm_90a", cache_dir=cache_dir, allow_jit=False)
    except KernelNotFoundError as err:
        return {"error": str(err)}
    return {"origin": image.origin, "key": image.key, "sha256": hashlib.sha256(image.cubin).hexdigest()}


for kernel, dtype in specs:
    spec = make_spec(kernel, weight_dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found[spec.variant] = {"with_cache": look(spec, cache), "alone": look(spec, empty)}
    found[spec.variant]["warnings"] = [str(w.message) for w in caught]
print(json.dumps({"root": str(root), "kernels": kernels, "found": found}))
"""


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A plain venv (no pip, no system packages) with compressc's runtime deps but not cutlass."""
    home = tmp_path_factory.mktemp("venv")
    env_dir = home / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # torch, numpy, click, rich, cuda-python from this venv (linked one by one, leaving out
    # nvidia-cutlass-dsl's modules and metadata); compressc from the checkout. Plain path
    # lines do not run .pth files, so nothing puts cutlass back on sys.path.
    deps = home / "deps"
    deps.mkdir()
    for item in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not item.name.lower().startswith(("nvidia_cutlass_dsl", "cutlass", "compressc", "__editable__")):
            (deps / item.name).symlink_to(item)
    (site / "compressc_test_paths.pth").write_text(f"{REPO}\n{deps}\n")
    (site / "sitecustomize.py").write_text(NO_CUTLASS)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        env=_clean_env(),
    )
    return python


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COMPRESSC_", "PIP_"))}
    return env | extra


def _use_pack(python: Path, cache: Path, empty: Path) -> dict:
    specs = json.dumps([[s.kernel, s.weight_dtype] for s in SPECS])
    proc = subprocess.run(
        [python, "-c", _USE_PACK, specs, str(cache), str(empty)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=empty,
        env=_clean_env(COMPRESSC_NO_JIT="1"),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_inspect_in_the_venv_lists_the_pack(venv, built, tmp_path):
    proc = subprocess.run(
        [venv, "-m", "compressc.cli", "inspect", "--cache-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "compressc-kernels-sm90" in ln]
    assert len(lines) == len(SPECS) and all("*" in ln for ln in lines)
    assert f"{len(SPECS)} kernels from 1 pack(s) and the cache" in proc.stdout


def test_installed_pack_in_a_venv_without_cutlass(venv, built, tmp_path):
    cache, entries = built
    check = subprocess.run([venv, "-c", "import cutlass"], capture_output=True, text=True, env=_clean_env())
    assert check.returncode != 0 and "No module named 'cutlass' (blocked)" in check.stderr
    # Not merely blocked: neither the package nor its metadata is there.
    absent = "import importlib.metadata as m, importlib.util as u, sys; sys.meta_path.pop(0)\n"
    absent += "assert u.find_spec('cutlass') is None and u.find_spec('nvidia_cutlass_dsl') is None\n"
    absent += "try:\n    m.version('nvidia-cutlass-dsl')\nexcept m.PackageNotFoundError:\n    print('absent')"
    check = subprocess.run([venv, "-c", absent], capture_output=True, text=True, env=_clean_env())
    assert check.stdout.strip() == "absent", check.stderr
    out = _use_pack(venv, cache, tmp_path)
    root = Path(out["root"])
    assert root.parent.name == "compressc_kernels_sm90" and "site-packages" in root.parts
    assert len(out["kernels"]) == len(SPECS)
    for entry in entries:
        variant = entry.manifest["variant"]
        found = out["found"][variant]
        # The cache holds the very same kernels: the installed pack must win over it.
        for image in (found["with_cache"], found["alone"]):
            assert image["origin"].startswith(f"kernel pack {root}") and image["key"] == entry.key
            assert image["sha256"] == entry.manifest["cubin_sha256"]
        assert out["kernels"][f"{variant}@{ARCH}"]["cubin_sha256"] == entry.manifest["cubin_sha256"]
        assert found["warnings"] == []

    tampered = root / entries[0].key[:2] / entries[0].key / "kernel.cubin"
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0x01
    tampered.write_bytes(bytes(data))
    out = _use_pack(venv, cache, tmp_path)
    found = out["found"][entries[0].manifest["variant"]]
    # Refused: the user cache serves the kernel (with a warning), or nothing does (an error).
    assert (
        found["with_cache"]["origin"].startswith("user cache")
        and found["with_cache"]["key"] == entries[0].key
    )
    alone = found["alone"]["error"]
    assert f"kernel pack compressc-kernels-sm90 {__version__}: tampered: {tampered} has sha256" in alone
    assert "pip install --force-reinstall 'compressc-kernels-sm90==" in alone
    assert any(str(tampered) in w for w in found["warnings"])
    other = out["found"][entries[1].manifest["variant"]]
    assert other["alone"]["origin"].startswith("kernel pack") and other["warnings"] == []
