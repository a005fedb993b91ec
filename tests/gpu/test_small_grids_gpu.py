"""Small cases (T = 64) of the forced multi-row grids, for the sanitizer run (benchmarks/sanitize.py).

test_ops_gpu.py's tiled tests launch T = 1000 rows, too many for racecheck in its time limit.
These launch ceil(64 / per_cta) CTAs, each taking `per_cta` rows: a runs kernel (c4a, the MXFP4
indexer) unrolls several rows a CTA, a wave kernel (C128A's compress and store) sweeps them
per warp; bytes against the torch reference as in test_ops_gpu.py.
"""

from __future__ import annotations

import pytest
import torch
from test_ops_gpu import (
    _assert_same_bytes,
    _c128a_args,
    _c128a_case,
    _c128a_reference,
    _force_rows_per_cta,
    _run_fused,
    _seed,
)

from compressc.runtime import ops
from compressc.scenarios import make_scenario
from compressc.specs import make_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

T = 64
RUNS = [make_spec("c4a", weight_dtype="bf16"), make_spec("indexer_mxfp4", weight_dtype="bf16", rotate=True)]
WAVES = [make_spec("c128a_store", weight_dtype="bf16"), make_spec("c128a_store", weight_dtype="f32")]


@pytest.mark.parametrize("per_cta", [3, 32])
@pytest.mark.parametrize("spec", RUNS, ids=lambda s: s.variant)
def test_runs_grid_small(cuda_device, monkeypatch, spec, per_cta):
    _force_rows_per_cta(monkeypatch, per_cta)
    sc = make_scenario(spec, "mixed", T, device=cuda_device, seed=_seed(spec.variant, "small", per_cta))
    got = sc.poisoned_cache()
    _run_fused(spec, sc, got)
    _assert_same_bytes(spec, got, sc.run_reference(), sc)


@pytest.mark.parametrize("per_cta", [5, 32])
@pytest.mark.parametrize("spec", WAVES, ids=lambda s: s.variant)
def test_wave_grid_small(cuda_device, monkeypatch, spec, per_cta):
    _force_rows_per_cta(monkeypatch, per_cta)
    pool_spec, sc, state = _c128a_case(spec, "decode", T, cuda_device)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, sc.typed(got)), **sc.op_kwargs())
    _assert_same_bytes(spec, got, _c128a_reference(pool_spec, spec, sc, state), sc)
