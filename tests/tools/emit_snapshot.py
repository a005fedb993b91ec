"""Dump the emitted CuTe DSL source of every variant and special schedule, for byte-identity checks.

    python tests/tools/emit_snapshot.py OUT_DIR          # write OUT_DIR/<n>.py + index.txt
    python tests/tools/emit_snapshot.py OUT_DIR --check REF_DIR   # compare against a previous dump

The `# pipeline:` header line is left out of the comparison (it names the canonical pipeline).
Covers: the default matrix x (default, baseline, derived) x (sm_90a, sm_100a), every schedule
`compressc tune` proposes for each default variant (clusters, smem-staged, L2 prefetch, tiled
sweeps, grids, runs, elems/split), tests/gpu's special schedules and head sizes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

# this checkout's compressc, not an installed one: run as a script, sys.path[0] is tests/tools,
# and an editable install of another worktree would answer `import compressc` instead
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compressc.ir.from_spec import module_from_spec  # noqa: E402
from compressc.ir.verifier import VerifyError
from compressc.kernels.emitter import emit
from compressc.passes.manager import (
    DEFAULT_FETCH,
    PassManager,
    PipelineError,
    parse_pipeline,
    pipeline_string,
    resolve_pipeline,
)
from compressc.specs import make_spec
from compressc.specs.matrix import default_specs
from compressc.tune.candidates import proposals

ARCHS = ("sm_90a", "sm_100a")
_TAIL = "vectorize,lower-reduction,plan-smem"
# tests/gpu/test_schedules_gpu.py's special schedules
SCHEDULES = [
    ("c128a_compress", f"thread-map{{elems-per-lane=4,window-split=2,cluster-split=4}},{_TAIL},"
                       f"{DEFAULT_FETCH}"),
    ("c128a_compress", f"thread-map{{elems-per-lane=4,window-split=1,cluster-split=8}},{_TAIL},"
                       f"rows-in-flight{{rows=4}},{DEFAULT_FETCH.removeprefix('rows-in-flight,')}"),
    ("c4a", f"thread-map{{grid=tiled,cluster-split=2}},{_TAIL},{DEFAULT_FETCH}"),
    ("c128a_compress", f"thread-map{{elems-per-lane=4,window-split=4}},{_TAIL},"
                       f"{DEFAULT_FETCH.replace('rescale,', 'rescale,l2-prefetch,')}"),
    *[("c128a_split", f"thread-map{{cluster-split={s}}},{_TAIL},{DEFAULT_FETCH}") for s in (8, 4)],
]
HEADS = [("c4a", 384), ("c4a", 320), ("indexer_fp8", 192), ("indexer_fp8", 384), ("c128a_store", 384),
         ("c128a_compress", 384)]


def _cases():
    specs = default_specs()
    for kernel, head in HEADS:
        specs.append(make_spec(kernel, head))
    for spec in specs:
        module = module_from_spec(spec)
        for arch in ARCHS:
            texts = ["default", "baseline", "derived"]
            if spec.kernel != "csa":
                texts += [t for _, t in proposals(module, arch)]
            texts += [t for k, t in SCHEDULES if k == spec.kernel]
            seen = set()
            for text in texts:
                try:
                    resolved = resolve_pipeline(text, module, arch)
                    passes = parse_pipeline(resolved)
                    lowered = PassManager(passes).run(module)
                except (VerifyError, PipelineError, ValueError):
                    continue
                key = (spec.variant, pipeline_string(passes))
                if key in seen:
                    continue
                seen.add(key)
                yield f"{spec.variant}@{arch} {key[1]}", lowered, pipeline_string(passes)


def _strip(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if not line.startswith("# pipeline:"))


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for n, (label, lowered, canonical) in enumerate(_cases()):
        source = _strip(emit(lowered, canonical))
        (out / f"{n:04d}.py").write_text(source)
        index.append(f"{n:04d} {hashlib.sha256(source.encode()).hexdigest()[:16]} {label}")
    (out / "index.txt").write_text("\n".join(index) + "\n")
    print(f"{len(index)} sources written to {out}")
    if "--check" in sys.argv:
        ref = Path(sys.argv[sys.argv.index("--check") + 1])
        theirs = {line.split(" ", 2)[2]: line.split(" ", 2)[1]
                  for line in (ref / "index.txt").read_text().splitlines()}
        mine = {line.split(" ", 2)[2]: line.split(" ", 2)[1] for line in index}
        differ = [k for k in theirs if mine.get(k) != theirs[k]]
        print(f"compared {len(theirs)} sources: {len(differ)} differ, {len(set(mine) - set(theirs))} new")
        for k in differ[:20]:
            print("  DIFFERS:", k)
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
