"""A stand-in vLLM package tree for the plugin tests, with the interface of the real one.

The patched callables get the parameter lists extracted from vLLM
(tests/data/vllm_dsv4_interface.json); their bodies only record the keywords they were
called with. `compressor.py` binds and calls them the way vLLM's DeepseekCompressor does
(module-level import of the Triton launcher, import of the CuTe dispatcher inside the call).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

FIXTURE = Path(__file__).parent / "data" / "vllm_dsv4_interface.json"
CUTE = "vllm.models.deepseek_v4.nvidia.ops.sparse_attn_compress_cutedsl"
TRITON = "vllm.models.deepseek_v4.common.ops.fused_compress_quant_cache"
COMPRESSOR = "vllm.models.deepseek_v4.compressor"


def interface() -> dict:
    return json.loads(FIXTURE.read_text())


def binding(module: str, name: str, data: dict | None = None) -> dict:
    return (data or interface())["modules"][module]["bindings"][name]


def _params(sig: dict) -> str:
    return ", ".join(f"{p}={sig['defaults'][p]}" if p in sig["defaults"] else p for p in sig["params"])


def _cute_source(sig: dict, cutlass: bool) -> str:
    return textwrap.dedent(f"""\
        {"import cutlass  # as vLLM's kernel module does" if cutlass else ""}
        CALLS = []

        class {sig["class"]}:
            c4_store = "vllm's C4 kernel"

            def __call__(self, {_params(sig)}):
                CALLS.append(dict(locals(), self=None))

        _SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL = {sig["class"]}()
        """)


def _triton_source(sig: dict) -> str:
    return textwrap.dedent(f"""\
        CALLS = []

        def compress_norm_rope_store_triton({_params(sig)}):
            CALLS.append(dict(locals()))
        """)


_COMPRESSOR = """\
from vllm.models.deepseek_v4.common.ops.fused_compress_quant_cache import (
    compress_norm_rope_store_triton,
)


def call_cute(**kwargs):
    from .nvidia.ops.sparse_attn_compress_cutedsl import _SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL

    return _SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL(**kwargs)


def call_triton(**kwargs):
    return compress_norm_rope_store_triton(**kwargs)
"""

_PLATFORMS = """\
class _Platform:
    device_name = "{name}"

    def is_cuda(self):
        if {cuda} is None:
            import psutil_missing_here  # as vLLM's platform detection can fail
        return {cuda}


current_platform = _Platform()
"""

_WARMUP = """\
class JitWarmupRegistry:
    def __init__(self, vllm_config):
        self.vllm_config = vllm_config
        self.ran = 0

    def warmup(self):
        self.ran += 1
"""


def write_tree(root: Path, *, cutlass: bool = False, cuda: bool | None = True, model: bool = True) -> Path:
    """A fake vLLM under `root` (put `root` on sys.path); returns `root`. cuda=None: asking the
    platform fails."""
    data = interface()
    files = {
        "vllm/__init__.py": "",
        "vllm/platforms/__init__.py": _PLATFORMS.format(name="cuda" if cuda else "rocm", cuda=cuda),
        "vllm/models/__init__.py": "",
        "vllm/model_executor/__init__.py": "",
        "vllm/model_executor/warmup/__init__.py": "",
        "vllm/model_executor/warmup/jit_warmup.py": _WARMUP,
    }
    if model:
        files |= {
            "vllm/models/deepseek_v4/__init__.py": "",
            "vllm/models/deepseek_v4/compressor.py": _COMPRESSOR,
            "vllm/models/deepseek_v4/nvidia/__init__.py": "",
            "vllm/models/deepseek_v4/nvidia/ops/__init__.py": "",
            "vllm/models/deepseek_v4/nvidia/ops/sparse_attn_compress_cutedsl.py":
                _cute_source(binding(CUTE, "_SPARSE_ATTN_COMPRESSOR_CUTEDSL_KERNEL", data), cutlass),
            "vllm/models/deepseek_v4/common/__init__.py": "",
            "vllm/models/deepseek_v4/common/ops/__init__.py": "",
            "vllm/models/deepseek_v4/common/ops/fused_compress_quant_cache.py":
                _triton_source(binding(TRITON, "compress_norm_rope_store_triton", data)),
        }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
