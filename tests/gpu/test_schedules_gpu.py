"""GPU tests of schedules the tuner may pick but the shipped defaults do not use.

Covered: a thread-block cluster pooling one window (`thread-map{cluster-split}`, DSMEM merge,
cluster launch) and the window prefetched into L2 (the `l2-prefetch` pass); c128a_split's
cluster merge (SPLIT_SCHEDULES, tested in test_c128a_split_cluster_gpu.py). Their
kernels are built on the build host into a directory of their own and carried over:

    python tests/gpu/test_schedules_gpu.py build/kernels-schedules        (build host, cutlass)
    COMPRESSC_CACHE_DIR=build/kernels COMPRESSC_SCHEDULES_DIR=build/kernels-schedules \\
        python -m pytest -m gpu tests/gpu                                   (GPU host)

Each test finds its kernel by the manifest's variant and pipeline, routes the op's launch of
that variant to it (the other kernel of C128A stays the shipped one) and checks the cache
bytes against the torch reference under docs/kernels.md §6, the cache poisoned first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ops_gpu import _assert_same_bytes, _c128a_args, _c128a_case, _c128a_reference, _run_fused, _seed

from compressc.passes.manager import DEFAULT_FETCH, parse_pipeline, pipeline_string
from compressc.runtime import loader, ops
from compressc.runtime.resolve import KernelImage, check_manifest
from compressc.scenarios import make_scenario
from compressc.specs import make_spec

AFTER_ROWS = DEFAULT_FETCH.removeprefix("rows-in-flight,")  # the window passes after it

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TAIL = "vectorize,lower-reduction,plan-smem"
# (kernel, pipeline): what each exercises
SCHEDULES = [
    # clusters of 4, two split groups a CTA: both merges, a 2-chunk loop per group
    ("c128a_compress", f"thread-map{{elems-per-lane=4,window-split=2,cluster-split=4}},{TAIL},"
                       f"{DEFAULT_FETCH}"),
    # clusters of 8, one group a CTA: seven peers' slots in rank 0's smem
    ("c128a_compress", f"thread-map{{elems-per-lane=4,window-split=1,cluster-split=8}},{TAIL},"
                       f"rows-in-flight{{rows=4}},{AFTER_ROWS}"),
    # C4A on clusters of 2: rank 0's half of the window is absent at a sequence start
    ("c4a", f"thread-map{{grid=tiled,cluster-split=2}},{TAIL},{DEFAULT_FETCH}"),
    # each page run of the window bulk-prefetched into L2
    ("c128a_compress", f"thread-map{{elems-per-lane=4,window-split=4}},{TAIL},"
                       f"{DEFAULT_FETCH.replace('rescale,', 'rescale,l2-prefetch,')}"),
]
WEIGHT = {"c128a_compress": "f32", "c4a": "bf16"}  # the variants the ops launch
# c128a_split's cluster merge (docs/kernels.md §13): the row's S CTAs one cluster, rank 0 storing the
# row; both weights (tests/gpu/test_c128a_split_cluster_gpu.py routes compress_c128a to them)
SPLIT_SCHEDULES = [f"thread-map{{cluster-split={s}}},{TAIL},{DEFAULT_FETCH}" for s in (8, 4)]
DEFAULT_DIR = Path("build/kernels-schedules")


def _schedule_dir() -> Path:
    return Path(os.environ.get("COMPRESSC_SCHEDULES_DIR", DEFAULT_DIR))


def _find(spec, pipeline: str) -> KernelImage:
    root, canonical = _schedule_dir(), pipeline_string(parse_pipeline(pipeline))
    for path in sorted(root.glob("*/*/manifest.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("variant") == spec.variant and manifest.get("pipeline") == canonical:
            check_manifest(spec, manifest["arch"], manifest)
            cubin = (path.parent / manifest["cubin"]).read_bytes()
            return KernelImage(manifest, cubin, f"schedules dir ({path.parent})")
    pytest.skip(f"{spec.variant} with {canonical} is not in {root}: build it on the build host with "
                f"`python tests/gpu/test_schedules_gpu.py {root}` and carry the directory")


@pytest.fixture(params=SCHEDULES, ids=lambda s: f"{s[0]}:{s[1].split(',')[0]}")
def routed(request, cuda_device, monkeypatch):
    """The op's kernel of this variant replaced by the schedule's, loaded from its cubin."""
    kernel, pipeline = request.param
    spec = make_spec(kernel, 512, 64, weight_dtype=WEIGHT[kernel])
    image = _find(spec, pipeline)
    loaded = loader.load_kernel(image, cuda_device.index or 0)
    shipped = ops.kernel_for
    monkeypatch.setattr(ops, "kernel_for",
                        lambda s, d: loaded if s.variant == spec.variant else shipped(s, d))
    return kernel, image


CASES = [("prefill", 1000, {}), ("mixed", 300, {}), ("decode", 64, {}), ("decode", 1000, {}),
         # sequence starts: in the overlapping C4 window, rank 0's half has absent rows
         ("mixed", 300, {"short_positions": True})]


@pytest.mark.parametrize("kind,T,extra", CASES, ids=[f"{k}-{t}{'-starts' if e else ''}" for k, t, e in CASES])
def test_schedule_matches_reference(routed, cuda_device, kind, T, extra):
    kernel, _ = routed
    if kernel == "c4a":
        spec = make_spec("c4a", weight_dtype="bf16")
        sc = make_scenario(spec, kind, T, device=cuda_device, seed=_seed("schedule", kind, T, extra), **extra)
        got = sc.poisoned_cache()
        _run_fused(spec, sc, got)
        _assert_same_bytes(spec, got, sc.run_reference(), sc)
        return
    store = make_spec("c128a_store", weight_dtype="bf16")
    pool_spec, sc, state = _c128a_case(store, kind, T, cuda_device, **extra)
    got = sc.poisoned_cache()
    ops.compress_c128a(*_c128a_args(sc, state, got))
    _assert_same_bytes(store, got, _c128a_reference(pool_spec, store, sc, state), sc)


def _build(out: str) -> None:
    """Build every schedule of SCHEDULES and SPLIT_SCHEDULES into `out` (needs nvidia-cutlass-dsl)."""
    builds = [(kernel, pipeline, ["--weight-dtype", WEIGHT[kernel]]) for kernel, pipeline in SCHEDULES]
    builds += [("c128a_split", pipeline, []) for pipeline in SPLIT_SCHEDULES]  # bf16 and f32
    for kernel, pipeline, weight in builds:
        subprocess.run([sys.executable, "-m", "compressc.cli", "build", "--arch", "sm90", "--spec", kernel,
                        "--head-size", "512", "--quant-block", "64", *weight, "-p", pipeline, "--out", out],
                       check=True)


if __name__ == "__main__":
    _build(sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_DIR))
