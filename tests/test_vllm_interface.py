"""The plugin against vLLM's real interface, extracted from vLLM 0.34.0 by AST.

tests/data/vllm_dsv4_interface.json was written by tests/tools/extract_vllm_interface.py from
the newest vLLM wheel on PyPI (installed with --no-deps: its imports cannot be satisfied here,
no CUDA/triton, so the source is parsed, not imported). Each check takes an extracted interface,
so `test_live_vllm` runs the same checks on a vLLM that is installed (or named by
COMPRESSC_TEST_VLLM_SOURCE: a wheel or a directory holding vllm/).
"""

from __future__ import annotations

import inspect
import os
import sys
import tomllib
from pathlib import Path

import pytest
import vllm_fake

from compressc.integrations import vllm as plugin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tools"))
import extract_vllm_interface as extractor  # noqa: E402

DISPATCHERS = {"_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL": plugin.CuteDispatcher,
               "compress_norm_rope_store_cutedsl": plugin.CuteDispatcher,
               "compress_norm_rope_store_triton": plugin.TritonDispatcher}


def _ours(dispatcher: type) -> tuple[list[str], dict[str, str]]:
    params = list(inspect.signature(dispatcher.__call__).parameters.values())[1:]
    named = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD  # newer keywords are accepted
    return [p.name for p in named], {p.name: repr(p.default) for p in named if p.default is not p.empty}


def check_patched_names_exist(data: dict) -> None:
    """The names the model calls in this version are all among the plugin's targets, and exist."""
    targets = {(t.module, t.attr) for t in plugin.TARGETS}
    found = {(m, name) for m, info in data["modules"].items() if info for name in info["bindings"]}
    assert found, "no patched name found in this vLLM"
    assert found <= targets
    for info in data["modules"].values():
        for lazy in (info or {}).get("lazy_imports", []):  # imported inside forward: patch the definer
            assert all((lazy["from"], name) in found for name in lazy["names"]), lazy


def check_signatures_match(data: dict) -> None:
    """Each replaced callable has vLLM's parameters, in vLLM's order, with vLLM's defaults."""
    for info in filter(None, data["modules"].values()):
        for name, binding in info["bindings"].items():
            if binding["kind"] == "import":
                continue
            params, defaults = _ours(DISPATCHERS[name])
            assert params == binding["params"], name
            assert defaults == binding["defaults"], name
            assert not binding["kwonly"] and not binding["varargs"]


def check_call_sites_bind(data: dict) -> None:
    """Every call site's keywords bind to a named parameter of our dispatcher (none left over)."""
    checked = 0
    for site in data["call_sites"]:
        variants = ([(b["callable"], b["extra_keywords"]) for b in site["branches"]]
                    if site["callee"] == extractor.DISPATCH_VAR else [(site["callee"], [])])
        for callee, extra in variants:
            if callee not in DISPATCHERS:  # ROCm's two-stage launcher: not replaced on CUDA
                continue
            keywords = site["keywords"] + extra
            try:
                bound = inspect.signature(DISPATCHERS[callee].__call__).bind(None, **dict.fromkeys(keywords))
            except TypeError as exc:
                raise AssertionError(f"{site['module']}.{site['function']} -> {callee}: {exc}") from exc
            assert "newer" not in bound.arguments, (callee, sorted(bound.arguments.get("newer", {})))
            checked += 1
    assert checked >= 2


def check_plugin_group(data: dict) -> None:
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points[data["plugin_group"]] == {"compressc": "compressc.integrations.vllm:register"}


def check_warmup_registry(data: dict) -> None:
    registry = data["jit_warmup_registry"]
    assert registry["methods"]["warmup"] == [] and registry["sets_vllm_config"]


CHECKS = [check_patched_names_exist, check_signatures_match, check_call_sites_bind, check_plugin_group,
          check_warmup_registry]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_vllm_0_34_interface(check):
    check(vllm_fake.interface())


def test_fixture_is_vllm_0_34():
    data = vllm_fake.interface()
    assert data["vllm_version"] == "0.34.0" and data["plugin_group"] == "vllm.general_plugins"
    cute = data["modules"][vllm_fake.CUTE]["bindings"]["_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL"]
    assert cute["kind"] == "instance" and cute["params"][:2] == ["state_cache", "num_actual"]


def test_a_renamed_keyword_is_caught():
    """The checks fail where vLLM's call would no longer bind to a dispatcher parameter."""
    data = vllm_fake.interface()
    site = next(s for s in data["call_sites"] if s["callee"] == extractor.DISPATCH_VAR)
    site["keywords"] = [k if k != "kv_cache" else "k_cache" for k in site["keywords"]]
    with pytest.raises(AssertionError):
        check_call_sites_bind(data)
    data = vllm_fake.interface()
    data["modules"][vllm_fake.TRITON]["bindings"]["compress_norm_rope_store_triton"]["params"].append("x")
    with pytest.raises(AssertionError):
        check_signatures_match(data)


def test_extractor_reads_a_vllm_tree(tmp_path):
    """The extractor on the stand-in tree (written from the fixture) gives back its signatures."""
    root = vllm_fake.write_tree(tmp_path)
    out = extractor.extract(extractor.Source(root))
    want = vllm_fake.interface()["modules"]
    for module in (vllm_fake.CUTE, vllm_fake.TRITON):
        assert out["modules"][module]["bindings"] == want[module]["bindings"]
    assert out["modules"][vllm_fake.COMPRESSOR]["bindings"] == want[vllm_fake.COMPRESSOR]["bindings"]
    lazy = out["modules"][vllm_fake.COMPRESSOR]["lazy_imports"]
    assert lazy == [{"function": "call_cute", "from": vllm_fake.CUTE,
                     "names": ["_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL"]}]


def test_relative_imports_resolve_from_the_importing_module():
    node = extractor.ast.parse("from ..common.ops import x").body[0]
    got = extractor.absolute(node, "vllm.models.deepseek_v4.nvidia.model")
    assert got == "vllm.models.deepseek_v4.common.ops"
    node = extractor.ast.parse("from . import y").body[0]
    assert extractor.absolute(node, "vllm.models.deepseek_v4.compressor") == "vllm.models.deepseek_v4"


def test_extractor_cli_errors(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="nowhere: no such file or directory"):
        extractor.main([str(tmp_path / "nowhere")])
    monkeypatch.setattr(extractor.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="no SOURCE given and no vllm installed: pass a wheel or a dir"):
        extractor.main([])


def test_extractor_writes_the_fixture_format(tmp_path):
    out = tmp_path / "interface.json"
    assert extractor.main([str(vllm_fake.write_tree(tmp_path / "site")), "--out", str(out)]) == 0
    data = extractor.json.loads(out.read_text())
    assert set(data) == set(vllm_fake.interface()) and data["plugin_group"] is None  # the stand-in has none


def _live_source() -> Path | None:
    given = os.environ.get("COMPRESSC_TEST_VLLM_SOURCE")
    if given:
        return Path(given)
    try:
        return extractor._installed()
    except SystemExit:
        return None


@pytest.mark.skipif(_live_source() is None, reason="no vLLM installed and COMPRESSC_TEST_VLLM_SOURCE unset")
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_live_vllm(check):
    check(extractor.extract(extractor.Source(_live_source())))


@pytest.mark.skipif(_live_source() is None or _live_source().suffix == ".whl",
                    reason="needs an installed (or unpacked) vLLM: COMPRESSC_TEST_VLLM_SOURCE=<dir>")
def test_live_vllm_register_never_raises():
    """register() on the real package, in a fresh process: it patches, or says in one line why not
    (here without vLLM's dependencies or a GPU: its platform cannot be determined)."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(_live_source())!r})
        logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
        from compressc.integrations import vllm as plugin
        plugin.register()
        plugin.register()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vllm.compressc ")]
    assert len(lines) == 1, lines
