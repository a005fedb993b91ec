"""The vllm.general_plugins entry point on a stand-in vLLM tree (tests/vllm_fake.py).

What it patches and when (on import of each module, never importing vLLM's kernel modules
itself), that it is idempotent, off with COMPRESSC_VLLM=0, quiet without vLLM or the model,
that it joins JitWarmupRegistry.warmup, and that it never imports cutlass.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import vllm_fake
from no_cutlass import NO_CUTLASS

from compressc.integrations import after_import, vllm_warmup
from compressc.integrations import vllm as plugin

LOGGER = "vllm.compressc"


def _purge() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch, caplog):
    """make(**tree options) writes a stand-in vLLM on sys.path; the plugin starts unregistered."""
    finder = after_import._AfterImportFinder()
    monkeypatch.setattr(after_import, "_FINDER", finder)
    monkeypatch.setitem(plugin._state, "registered", False)
    monkeypatch.setattr(plugin, "patched", [])
    monkeypatch.setattr(plugin, "_logged", set())
    monkeypatch.delenv("COMPRESSC_VLLM", raising=False)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    _purge()

    def make(**options) -> Path:
        root = vllm_fake.write_tree(tmp_path / "site", **options)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
    _purge()


def _messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_patches_each_name_when_its_module_loads(fake_vllm, caplog):
    fake_vllm()
    plugin.register()
    # nothing of the model is imported by the plugin: vLLM's kernel module imports cutlass
    assert vllm_fake.CUTE not in sys.modules and vllm_fake.COMPRESSOR not in sys.modules
    compressor = importlib.import_module(vllm_fake.COMPRESSOR)
    triton = sys.modules[vllm_fake.TRITON]
    assert isinstance(compressor.compress_norm_rope_store_triton, plugin.TritonDispatcher)
    # the consumer bound the name after the defining module was patched: one dispatcher for both
    assert compressor.compress_norm_rope_store_triton is triton.compress_norm_rope_store_triton
    assert compressor.compress_norm_rope_store_triton.original.__module__ == vllm_fake.TRITON
    assert vllm_fake.CUTE not in sys.modules
    cute = importlib.import_module(vllm_fake.CUTE)
    dispatcher = cute._SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL
    assert isinstance(dispatcher, plugin.CuteDispatcher)
    assert dispatcher.c4_store == "vllm's C4 kernel"  # vLLM's attributes pass through
    # the compressor's own name needed no patch: it already held the dispatcher
    assert plugin.patched == [f"{vllm_fake.TRITON}.compress_norm_rope_store_triton",
                              f"{vllm_fake.CUTE}._SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL"]
    (line,) = _messages(caplog, logging.INFO)
    assert line.startswith("compressc: vLLM DeepSeek-V4 compressor calls go to compressc kernels (")
    assert "sparse_attn_compress_cutedsl._SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL" in line
    assert line.endswith("; COMPRESSC_VLLM=0 turns this off)")


def test_a_module_already_imported_is_patched_at_once(fake_vllm):
    fake_vllm()
    cute = importlib.import_module(vllm_fake.CUTE)
    plugin.register()
    assert isinstance(cute._SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL, plugin.CuteDispatcher)


def test_register_twice_patches_once(fake_vllm, caplog):
    fake_vllm()
    plugin.register()
    waiting = after_import.pending()
    plugin.register()
    assert after_import.pending() == waiting
    cute = importlib.import_module(vllm_fake.CUTE)
    target = plugin.TARGETS[0]
    plugin.patch(cute, target)  # a second patch of the same name does not wrap the dispatcher
    assert not isinstance(cute._SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL.original, plugin.CuteDispatcher)
    assert len(_messages(caplog, logging.INFO)) == 1


@pytest.mark.parametrize(
    "options,env,reason",
    [
        ({}, "0", "COMPRESSC_VLLM=0"),
        (None, None, "vLLM is not installed"),
        ({"model": False}, None, "this vLLM has no DeepSeek-V4 model (vllm.models.deepseek_v4)"),
        ({"cuda": False}, None, "the platform is not CUDA (rocm)"),
        ({"cuda": None}, None, "vLLM's platform cannot be determined (ModuleNotFoundError: "
                               "No module named 'psutil_missing_here')"),
    ],
    ids=["off", "no-vllm", "no-model", "not-cuda", "platform-fails"],
)
def test_inactive_with_one_debug_line(fake_vllm, caplog, monkeypatch, options, env, reason):
    if options is not None:
        fake_vllm(**options)
    if env is not None:
        monkeypatch.setenv("COMPRESSC_VLLM", env)
    plugin.register()
    assert _messages(caplog, logging.DEBUG) == [f"compressc: vLLM plugin inactive: {reason}"]
    assert not _messages(caplog, logging.INFO) and after_import.pending() == {}


def test_a_bad_setting_leaves_vllm_alone(fake_vllm, caplog, monkeypatch):
    fake_vllm()
    monkeypatch.setenv("COMPRESSC_VLLM", "maybe")
    plugin.register()
    (warning,) = _messages(caplog, logging.WARNING)
    assert warning.startswith("compressc: vLLM plugin off: COMPRESSC_VLLM='maybe' is not a boolean")
    assert after_import.pending() == {}


def test_joins_vllms_jit_warmup(fake_vllm, monkeypatch):
    fake_vllm()
    seen = []
    monkeypatch.setattr(vllm_warmup, "preload_for", seen.append)
    plugin.register()
    module = importlib.import_module(vllm_warmup.WARMUP_MODULE)
    vllm_warmup.join_warmup(module)  # a second join wraps nothing more
    config = SimpleNamespace(name="the runner's config")
    registry = module.JitWarmupRegistry(config)
    registry.warmup()
    assert registry.ran == 1 and seen == [config]


def _config(ratios=(0, 4, 128), cache="fp8_ds_mla", dtype=torch.bfloat16, indexer="fp8") -> SimpleNamespace:
    attention = SimpleNamespace(resolve_indexer_kv_dtype=lambda default: indexer)
    hf = SimpleNamespace(compress_ratios=list(ratios))
    return SimpleNamespace(model_config=SimpleNamespace(hf_config=hf, dtype=dtype),
                           cache_config=SimpleNamespace(cache_dtype=cache), attention_config=attention)


@pytest.mark.parametrize(
    "config,ops,weight,fmt",
    [
        (_config(), ("c4a", "indexer_fp8", "c128a"), "bf16", "fp8_ds_mla"),
        (_config(dtype=torch.float32, ratios=(4,)), ("c4a", "indexer_fp8"), "f32", "fp8_ds_mla"),
        (_config(cache="bfloat16"), ("c4a", "indexer_fp8", "c128a"), "bf16", "full_bf16"),
        (_config(cache="fp8_e4m3"), ("c4a", "indexer_fp8", "c128a"), "bf16", "full_fp8"),
        (_config(indexer="mxfp4"), ("c4a", "indexer_mxfp4", "c128a"), "bf16", "fp8_ds_mla"),
        (_config(cache="int8_ds_mla"), ("indexer_fp8",), "bf16", "fp8_ds_mla"),  # int8: vLLM's own
        (_config(ratios=()), (), "bf16", "fp8_ds_mla"),  # not DeepSeek-V4
    ],
    ids=["dsv4", "f32-c4-only", "full-bf16", "full-fp8", "mxfp4", "int8", "other-model"],
)
def test_warmup_plan(config, ops, weight, fmt):
    assert vllm_warmup.plan_for(config) == vllm_warmup.WarmupPlan(ops, weight, fmt)


def test_warmup_plan_reads_upstream_layer_types():
    hf = SimpleNamespace(compress_rates={"csa": 4, "hca": 128}, layer_types=["swa", "csa", "hca"])
    assert vllm_warmup.compress_ratios(hf) == {0, 4, 128}
    legacy = SimpleNamespace(use_fp4_indexer_cache=True)
    assert vllm_warmup.indexer_uses_mxfp4(legacy) and not vllm_warmup.indexer_uses_mxfp4(None)


def test_warmup_preloads_the_plan(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    import compressc.runtime as runtime

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(plugin, "_device_problem", lambda device: None)
    monkeypatch.setattr(runtime, "preload", lambda ops, weight_dtypes, device, cache_format: calls.append(
        (ops, weight_dtypes, device)) or ["v1", "v2"])
    reserved = []
    monkeypatch.setattr(runtime, "reserve_c128a_scratch", lambda *a: reserved.append(a))
    assert vllm_warmup.preload_for(_config(ratios=(4,))) == ["v1", "v2"]
    assert calls == [(("c4a", "indexer_fp8"), ("bf16",), 3)] and reserved == []
    config = _config()
    config.scheduler_config = SimpleNamespace(max_num_batched_tokens=8192)
    vllm_warmup.preload_for(config)
    assert reserved == [(8192, 512, torch.device("cuda", 3))]
    assert "compressc: 2 kernels loaded for warm-up on cuda:3 (v1, v2)" in caplog.messages


def test_never_imports_cutlass(tmp_path):
    """With cutlass blocked, as on a machine that only has the runtime: register, let vLLM import
    its compressor module, and see that only vLLM's own kernel module would need cutlass."""
    root = vllm_fake.write_tree(tmp_path / "site", cutlass=True)
    script = NO_CUTLASS + textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(root)!r})
        from compressc.integrations import vllm as plugin
        plugin.register()
        import vllm.models.deepseek_v4.compressor as compressor
        print("DISPATCHER", type(compressor.compress_norm_rope_store_triton).__name__)
        print("CUTLASS", sorted(m for m in sys.modules if m.startswith("cutlass")))
        try:
            import vllm.models.deepseek_v4.nvidia.ops.sparse_attn_compress_cutedsl
        except ModuleNotFoundError as exc:
            print("BLOCKED", exc.name)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "DISPATCHER TritonDispatcher" in proc.stdout
    assert "CUTLASS []" in proc.stdout and "BLOCKED cutlass" in proc.stdout


def test_a_failing_patch_never_breaks_the_import(fake_vllm, caplog):
    fake_vllm()
    seen = []

    def broken(module):
        raise RuntimeError("boom")

    after_import.when_imported(vllm_fake.TRITON, broken)
    after_import.when_imported(vllm_fake.TRITON, seen.append)
    module = importlib.import_module(vllm_fake.TRITON)
    assert seen == [module] and after_import.pending() == {}
    (warning,) = _messages(caplog, logging.WARNING)
    assert warning == f"compressc: patching {vllm_fake.TRITON} failed; vLLM's own kernels stay in place"
    assert module.__loader__.get_filename(vllm_fake.TRITON).endswith("fused_compress_quant_cache.py")
