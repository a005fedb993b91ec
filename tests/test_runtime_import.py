"""The runtime imports and works where nvidia-cutlass-dsl is not installed (docs/architecture.md §2)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from no_cutlass import NO_CUTLASS

RUNTIME = Path(__file__).resolve().parents[1] / "compressc" / "runtime"


_USE_RUNTIME = """
import compressc.runtime as rt
from compressc.runtime import ops
for _name in (*rt.__all__, *ops._LAZY):  # the names load lazily (PEP 562): load every one
    getattr(ops if _name in ops._LAZY else rt, _name)
import compressc.runtime.torch_ops
import compressc.reference  # the torch reference needs no toolchain either
from compressc.runtime import loader  # cuda-python only; importing needs no driver
from compressc.runtime.args import pack_args
from compressc.specs import make_spec
from compressc.specs.abi import abi
import ctypes, types

spec = make_spec("c4a")
params = abi(spec)
values = {p.name: (4096 if p.kind == "ptr" else 1) for p in params}
keep, kp = pack_args(params, values)
assert len(kp) == len(params)
# The key of the build the runtime wants, computed without cutlass (issue 17).
from compressc.driver.key import canonical_json, hash_ingredients
from compressc.packs.wanted import wanted_build
want = wanted_build(spec, "sm_90a")
recorded = dict(want.ingredients, toolchain=TOOLCHAIN)
key = hash_ingredients(recorded)
assert want.key in (None, key)
print("WANTED KEY KNOWN:", want.key is not None)
entry = types.SimpleNamespace(
    manifest=dict(MANIFEST, key=key), path="fake", key=key, cubin_bytes=lambda: b"cubin",
    text=lambda name: canonical_json(recorded).decode() if name == "key.json" else None,
)
store = types.SimpleNamespace(find=lambda variant, arch: entry if variant == spec.variant else None,
                              get=lambda k: entry if k == key else None)
image = rt.find_kernel(spec, "sm_90a", pack_roots=[ROOT], cache_dir=ROOT, allow_jit=True,
                       store_factory=lambda root: store)
assert image.cubin == b"cubin"
print("CUTLASS LOADED:", sorted(m for m in sys.modules if m.startswith("cutlass")))
# A JIT build needs cutlass: blocked here, it must end in the build-extra hint.
try:
    rt.find_kernel(make_spec("indexer_fp8"), "sm_90a", pack_roots=[], cache_dir=ROOT, allow_jit=True,
                   store_factory=lambda root: store)
except rt.KernelNotFoundError as exc:
    print("NOT FOUND:", exc)
"""


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=RUNTIME.parents[1]
    )


def _manifest_literal() -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_runtime_resolve import manifest

    return repr(manifest())


def _toolchain() -> dict:
    """The toolchain versions of this machine (what a build here would hash), {} without them."""
    from compressc.driver.compile import ToolchainError, toolchain_fingerprint

    try:
        return toolchain_fingerprint()
    except ToolchainError:
        return {}


def test_blocker_really_blocks_cutlass():
    proc = _run(NO_CUTLASS + "import cutlass")
    assert proc.returncode != 0 and "blocked import of cutlass" in proc.stderr


def test_runtime_works_without_cutlass(tmp_path):
    script = (
        NO_CUTLASS
        + f"MANIFEST = {_manifest_literal()}\nROOT = __import__('pathlib').Path({str(tmp_path)!r})\n"
        + f"TOOLCHAIN = {_toolchain()!r}\n"
    )
    proc = _run(script + _USE_RUNTIME)
    assert proc.returncode == 0, proc.stderr
    assert "CUTLASS LOADED: []" in proc.stdout
    assert "JIT build: impossible, the build extra is not installed" in proc.stdout
    assert "pip install 'compressc[build]'" in proc.stdout


def test_real_store_works_without_cutlass(tmp_path):
    script = NO_CUTLASS + textwrap.dedent(f"""
        import json, pathlib
        from compressc.runtime import find_kernel
        from compressc.specs import make_spec
        from compressc.cache.integrity import seal
        from compressc.driver.key import canonical_json, hash_ingredients
        from compressc.packs.wanted import wanted_build
        recorded = dict(wanted_build(make_spec("c4a"), "sm_90a").ingredients, toolchain={_toolchain()!r})
        m = {_manifest_literal()}
        m = seal(dict(m, key=hash_ingredients(recorded), pipeline=recorded["pipeline"]))
        root = pathlib.Path({str(tmp_path)!r})
        entry = root / m["key"][:2] / m["key"]
        entry.mkdir(parents=True)
        (entry / "kernel.cubin").write_bytes(b"\\x7fELF fake cubin")
        (entry / "manifest.json").write_text(json.dumps(m))
        (entry / "key.json").write_text(canonical_json(recorded).decode())
        (root / "index").mkdir()
        index = root / "index" / (m["variant"] + "@" + m["arch"] + ".json")
        index.write_text(json.dumps({{"key": m["key"]}}))
        image = find_kernel(make_spec("c4a"), "sm_90a", pack_roots=[], cache_dir=root, allow_jit=False)
        print("FOUND", image.origin)
    """)
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert "FOUND user cache" in proc.stdout


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(RUNTIME.glob("*.py")), ids=lambda p: p.name)
def test_import_rules(path):
    names = _imports(path)
    assert not {n for n in names if n.split(".")[0] == "cutlass"}, f"{path.name} imports cutlass"
    cuda = {n for n in names if n == "cuda" or n.startswith("cuda.")}
    assert not cuda or path.name == "loader.py", f"{path.name} imports {cuda}: only loader.py may"
    assert "compressc.kernels" not in names and not any(n.startswith("compressc.passes") for n in names)


@pytest.mark.parametrize("path", sorted(RUNTIME.glob("*.py")), ids=lambda p: p.name)
def test_no_runtime_module_imports_cuda_bindings_when_it_loads(path):
    """cuda.bindings.driver takes 20-40 ms to import; the runtime imports it only to name an
    error, so a lookup in a process whose torch has not imported it does not pay for it."""
    top = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            top |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
    cuda = {n for n in top if n == "cuda" or n.startswith("cuda.")}
    assert not cuda, f"{path.name} imports {cuda} when it loads"


def test_the_runtime_imports_no_compiler_and_no_cli():
    """import compressc.runtime (the cold start's first step) loads neither the compiler, the
    command line, nor cutlass; the cache modules it needs load on the first lookup. Its names
    load on first use (PEP 562), so every one of them, and ops' lazy ones, is loaded first."""
    script = ("import sys, compressc.runtime as rt\n"
              "from compressc.runtime import ops\n"
              "for name in (*rt.__all__, *ops._LAZY): getattr(ops if name in ops._LAZY else rt, name)\n"
              "import compressc.runtime.torch_ops\n"
              "heavy = ('cutlass', 'click', 'rich', 'hypothesis', 'compressc.passes', 'compressc.ir',\n"
              "         'compressc.kernels', 'compressc.driver.build', 'compressc.driver.plan',\n"
              "         'compressc.cli')\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n")
    out = _run(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_ops_import_leaves_the_other_families_for_their_first_use():
    """`from compressc.runtime import ops` (the cold start) loads the C4A and C128A path only:
    the csa, indexer, online and ring ops, the startup and bounds-kernel helpers load when a
    name of theirs is first asked for, from `compressc.runtime` or from `ops` alike."""
    script = ("import sys\n"
              "from compressc.runtime import ops\n"
              "later = ('csa', 'indexer_ops', 'online', 'ring', 'startup', 'bounds_kernel', 'loader')\n"
              "print(sorted(m for m in later if 'compressc.runtime.' + m in sys.modules))\n"
              "import compressc.runtime as rt\n"
              "from compressc.runtime.ops import compress_indexer_fp8\n"
              "assert compress_indexer_fp8.__module__ == 'compressc.runtime.indexer_ops'\n"
              "assert ops.compress_csa.__module__ == 'compressc.runtime.csa'\n"
              "assert ops.save_ring_tail.__module__ == 'compressc.runtime.ring'\n"
              "assert rt.preload.__module__ == 'compressc.runtime.startup'\n"
              "assert rt.compress_c128a_online is ops.compress_c128a_online\n"
              "assert sorted(set(dir(rt))) == dir(rt) and sorted(set(dir(ops))) == dir(ops)  # once each\n"
              "for name in rt.__all__: getattr(rt, name)\n"
              "try:\n"
              "    ops.no_such_op\n"
              "except AttributeError as e:\n"
              "    print(e)\n")
    out = _run(script)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]"
    assert lines[1] == "module 'compressc.runtime.ops' has no attribute 'no_such_op'"


@pytest.mark.parametrize("module, table", [("compressc.runtime", "_WHERE"),
                                           ("compressc.runtime.ops", "_LAZY")])
def test_the_lazy_names_and_what_type_checkers_see_agree(module, table):
    """Each lazily loaded name has its TYPE_CHECKING import, from the module it loads from."""
    import importlib

    mod = importlib.import_module(module)
    seen = {}
    for node in ast.walk(ast.parse(Path(mod.__file__).read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                seen.update({alias.name: imp.module.rpartition(".")[2] for alias in imp.names})
    assert seen == getattr(mod, table)


def test_the_submodules_are_attributes_of_the_package_as_before():
    """`import compressc.runtime` once loaded ops, resolve and the rest: their attribute access
    (`compressc.runtime.ops.compress_c4a`) still works, and a missing name is an AttributeError."""
    script = ("import compressc.runtime as rt\n"
              "print(rt.ops.compress_c4a.__module__, rt.resolve.find_kernel is rt.find_kernel)\n"
              "try:\n"
              "    rt.no_such_module\n"
              "except AttributeError as e:\n"
              "    print(e)\n")
    out = _run(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["compressc.runtime.ops True",
                                       "module 'compressc.runtime' has no attribute 'no_such_module'"]
