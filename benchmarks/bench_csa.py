"""The fused CSA launch next to the two separate launches (docs/kernels.md §12), for bench.py.

    PYTHONPATH=. python benchmarks/bench.py --kernels build/kernels --kernel csa --no-torch

For each case (`csa`: packed main cache + fp8 indexer; `csa_full_bf16`, `csa_full_fp8`,
`csa_mxfp4`), on the same inputs (one CsaScenario: the same tokens, two state pools rotated
as bench.py rotates one) it times three impls, eager and inside one CUDA graph:

- `served`: what `ops.compress_csa` launches at this T (a copy of the `fused` row up to
  `compressc.runtime.csa.FUSED_MAX_T` rows, else of `separate`);
- `fused`: the csa kernel, one launch;
- `separate`: the c4a kernel then the indexer kernel, as an engine calls them today;
- `fused_before`: with `--before DIR`, DIR's csa build of the same variant (another schedule);
- `c4a`: the c4a launch alone (the target: fused <= 1.3x of it in a graph at T <= 512).

Targets (issue 16 item 2): graph_us(fused) <= 1.3 * graph_us(c4a) for T <= 512, and
us(fused) <= us(separate) and graph_us(fused) <= graph_us(separate) at every T.
"""

from __future__ import annotations

import torch

from compressc.runtime.args import pack_args
from compressc.runtime.csa import FUSED_MAX_T, checked_csa
from compressc.scenarios_csa import csa_scenario
from compressc.specs.abi import abi
from compressc.specs.family import make_spec

# bench kernel -> (main format, indexer kernel, bench.py's KERNELS names of the two parts)
CSA_KERNELS = {
    "csa": ("fp8_ds_mla", "indexer_fp8", "c4a", "indexer_fp8"),
    "csa_full_bf16": ("full_bf16", "indexer_fp8", "c4a_full_bf16", "indexer_fp8"),
    "csa_full_fp8": ("full_fp8", "indexer_fp8", "c4a_full_fp8", "indexer_fp8"),
    "csa_mxfp4": ("fp8_ds_mla", "indexer_mxfp4", "c4a", "indexer_mxfp4"),
}


def run_csa_case(bench, case, copy: float, max_pool: int) -> list[dict]:
    """Rows for impls fused, separate and c4a of one case (bench.timed_row's columns)."""
    from benchmarks.bench import Case, _unique_bytes, make_calls, rotated_tables, timed_row

    fmt, indexer, main_name, idx_name = CSA_KERNELS[case.kernel]
    spec = make_spec("csa", cache_format=fmt, indexer=indexer)
    sc = csa_scenario(spec, case.scenario, case.T, device="cuda", seed=case.T)
    names, parts = (main_name, idx_name), sc.scenarios
    sizes = [_unique_bytes(n, s.spec, s, s.active()) for n, s in zip(names, parts, strict=True)]
    pools = [rotated_tables(s, b, max_pool // 2) for s, b in zip(parts, sizes, strict=True)]
    outs = list(sc.poisoned_caches())
    scratch = torch.empty((1, 512), device="cuda", dtype=torch.float32)
    single = [
        make_calls(bench, "compressc", Case(n, case.scenario, case.T), s, pool, tables, out, scratch)
        for n, s, (pool, tables), out in zip(names, parts, pools, outs, strict=True)
    ]
    n = min(len(single[0]), len(single[1]))
    separate = [lambda a=single[0][k], b=single[1][k]: (a(), b()) for k in range(n)]
    fused = _fused_calls(bench, "compressc", spec, sc, pools, outs, n)
    nbytes = sum(sizes)
    rows = [
        timed_row(bench, case, "fused", fused, nbytes, copy, graph=True),
        *(  # an earlier (or another schedule's) csa build beside it, found by variant (--before)
            [timed_row(bench, case, "fused_before", _fused_calls(bench, "before", spec, sc, pools, outs, n),
                       nbytes, copy, graph=True)]
            if "before" in bench.dirs else []
        ),
        timed_row(bench, case, "separate", separate, nbytes, copy, graph=True),
        timed_row(bench, case, "c4a", single[0], sizes[0], copy, graph=True),
    ]
    # what ops.compress_csa launches at this T (fused up to FUSED_MAX_T rows, else the two)
    rows.insert(0, rows[0 if case.T <= FUSED_MAX_T else 1 + ("before" in bench.dirs)] | {"impl": "served"})
    del pools, outs, single, separate, fused
    torch.cuda.empty_cache()
    return rows


def _fused_calls(bench, impl: str, spec, sc, pools, outs, n: int) -> list:
    """The fused kernel's launches over the same rotated page tables as the separate calls."""
    kwargs = sc.op_kwargs(*outs)
    args = {
        k: v for k, v in kwargs.items() if k not in ("main_cache_format", "indexer_kernel", "indexer_rotate")
    }
    for name, (pool, _) in zip(("main", "indexer"), pools, strict=True):
        args[f"{name}_state_cache"] = pool
    if spec.cache_format == "full_fp8":
        args["main_fp8_scale"] = torch.ones(1, device="cuda")
    values, _, _ = checked_csa(args, (spec.cache_format, spec.indexer, spec.rotate))
    kernel, params = bench.kernel(impl, spec), abi(spec)
    calls = []
    for k in range(n):
        v = values | {
            "main_block_table": pools[0][1][k].data_ptr(),
            "indexer_block_table": pools[1][1][k].data_ptr(),
        }
        packed = pack_args(params, {p.name: v[p.name] for p in params})
        calls.append(lambda packed=packed: kernel.launch_rows(sc.T, packed[1]))
    return calls
