"""Cold start: `import compressc` to the first completed C4A launch, in a fresh process.

Run it on the GPU host with a kernel pack installed (kernels come from the pack; the
JIT is switched off so that a missing pack fails instead of compiling):

    COMPRESSC_NO_JIT=1 python benchmarks/cold_start.py [--breakdown]

With --breakdown the kernel is resolved and loaded in separately timed steps before
the (then warm) first launch; the plain run times the whole first call.

CUDA context creation is excluded: torch creates the context before the clock starts.
The inputs (compressc.scenarios) are made between the two timed spans and not counted. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def main() -> int:
    device = torch.device("cuda", 0)
    torch.cuda.init()
    torch.empty(1, device=device)  # the context exists before the clock starts
    torch.cuda.synchronize()

    t0 = time.perf_counter()
    import compressc  # noqa: F401
    from compressc.runtime import ops

    t_import = time.perf_counter() - t0
    from compressc.runtime.resolve import find_kernel
    from compressc.scenarios import make_scenario
    from compressc.specs import make_spec

    spec = make_spec("c4a", 512, 64)
    scenario = make_scenario(spec, "prefill", 64, device=device, seed=0)
    cache = scenario.poisoned_cache()
    args = scenario.args(cache)
    torch.cuda.synchronize()
    parts = {}
    if "--breakdown" in sys.argv:  # the same first call, split into its steps
        from compressc.runtime import loader as loader_module
        from compressc.runtime.resolve import find_kernel as find

        t = time.perf_counter()
        image = find(spec, loader_module.device_arch(0))
        parts["resolve_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        t = time.perf_counter()
        loader_module.load_kernel(image, 0)
        parts["load_ms"] = round((time.perf_counter() - t) * 1e3, 2)
    t1 = time.perf_counter()
    ops.compress_c4a(*args, head_size=512, quant_block=64)
    torch.cuda.synchronize()
    t_launch = time.perf_counter() - t1
    t2 = time.perf_counter()
    ops.compress_c4a(*args, head_size=512, quant_block=64)
    torch.cuda.synchronize()
    t_warm = time.perf_counter() - t2

    from compressc.runtime import loader

    origin = find_kernel(spec, loader.device_arch(0)).origin
    # the pack's wanted.json spares the lookup the compiler's import (compressc.packs.wanted)
    compiler = sorted(m for m in ("compressc.passes", "compressc.ir", "compressc.kernels")
                      if m in sys.modules)
    print(json.dumps({
        "import_ms": round(t_import * 1e3, 2),
        "first_launch_ms": round(t_launch * 1e3, 2),
        "cold_start_ms": round((t_import + t_launch) * 1e3, 2),
        "second_launch_ms": round(t_warm * 1e3, 3),
        "origin": origin,
        **parts,
        "compiler_imported": compiler,
        "no_jit": os.environ.get("COMPRESSC_NO_JIT"),
        "python": sys.version.split()[0],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
