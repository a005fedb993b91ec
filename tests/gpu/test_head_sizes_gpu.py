"""GPU tests of head sizes the default matrix does not ship, on their derived schedules.

Head 384 lays out 4 channels a lane (3 warps), 320 takes 2 (5 warps), and the fp8 indexer of
head 192 or 384 reduces its one quant block across warps through shared memory. Their kernels
are built on the build host into the kernel directory the GPU suite reads:

    python tests/gpu/test_head_sizes_gpu.py build/kernels        (build host, cutlass)
    COMPRESSC_CACHE_DIR=build/kernels python -m pytest -m gpu tests/gpu   (GPU host)

Each launch writes into a poisoned cache and is compared with the torch reference (docs/kernels.md §6).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_ops_gpu import _assert_same_bytes, _c128a_args, _c128a_case, _c128a_reference, _run_fused, _seed

from compressc.runtime import ops
from compressc.scenarios import make_scenario
from compressc.specs import make_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FUSED = [("c4a", 384), ("c4a", 320), ("indexer_fp8", 192), ("indexer_fp8", 384)]
C128A_HEADS = (384,)
CASES = [("prefill", 1000), ("mixed", 300), ("decode", 64)]


@pytest.mark.parametrize("kind,T", CASES)
@pytest.mark.parametrize("kernel,head", FUSED, ids=lambda v: str(v))
def test_fused_head_size_matches_reference(cuda_device, kernel, head, kind, T):
    spec = make_spec(kernel, head)
    sc = make_scenario(spec, kind, T, device=cuda_device, seed=_seed(spec.variant, kind, T))
    got = sc.poisoned_cache()
    _run_fused(spec, sc, got)
    _assert_same_bytes(spec, got, sc.run_reference(), sc)


@pytest.mark.parametrize("kind,T", CASES)
@pytest.mark.parametrize("head", C128A_HEADS)
def test_c128a_head_size_matches_reference(cuda_device, head, kind, T):
    store = make_spec("c128a_store", head)
    pool_spec, sc, state = _c128a_case(store, kind, T, cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, got), head_size=head, quant_block=store.quant_block)
    _assert_same_bytes(store, got, _c128a_reference(pool_spec, store, sc, state), sc)


def _build(out: str) -> None:
    """Build every variant above into `out` (needs nvidia-cutlass-dsl)."""
    variants = [(k, h, "bf16") for k, h in FUSED]
    variants += [("c128a_store", h, "bf16") for h in C128A_HEADS]
    variants += [("c128a_compress", h, "f32") for h in C128A_HEADS]
    for kernel, head, weight in variants:
        quant = str(make_spec(kernel, head).quant_block)
        subprocess.run([sys.executable, "-m", "compressc.cli", "build", "--arch", "sm90", "--spec", kernel,
                        "--head-size", str(head), "--quant-block", quant, "--weight-dtype", weight,
                        "--out", out], check=True)


if __name__ == "__main__":
    _build(sys.argv[1] if len(sys.argv) > 1 else "build/kernels")
