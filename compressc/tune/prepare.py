"""`compressc tune --prepare DIR`: compile every candidate schedule into DIR (no GPU needed).

DIR/store is an ordinary kernel store (the build driver's plan/build_plans fill it);
DIR/tune_plan.json lists, per variant, each candidate's pipeline and cache key, and
the candidates that did not build (spills and stack are build errors) as dropped.
Carry DIR to the GPU host and run `compressc tune --measure DIR` there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from compressc import __version__
from compressc.specs.family import KernelSpec
from compressc.tune.candidates import MAX_CANDIDATES, Candidate, candidates

PLAN_FILE = "tune_plan.json"
STORE_DIR = "store"
PLAN_FORMAT = 1


def prepare(
    specs: Sequence[KernelSpec],
    arch: str,
    out_dir: Path,
    workers: int,
    on_done: Callable | None = None,
    limit: int = MAX_CANDIDATES,
    on_planned: Callable[[int], None] | None = None,
) -> dict:
    """Enumerate, plan and build the candidates of `specs` for `arch`; write and return the plan."""
    from compressc.cache.arch import normalize_arch
    from compressc.cache.store import Store
    from compressc.driver.build import build_plans
    from compressc.driver.compile import toolchain_fingerprint
    from compressc.driver.key import source_fingerprint
    from compressc.driver.plan import plan
    from compressc.passes.tuned import load_tuned

    arch = normalize_arch(arch)
    tuned = load_tuned()
    fingerprint, toolchain = source_fingerprint(), toolchain_fingerprint()
    work = []
    for spec in specs:
        for cand in candidates(spec, arch, limit, tuned):
            work.append(
                (spec, cand, plan(spec, arch, cand.pipeline, fingerprint=fingerprint, toolchain=toolchain))
            )
    if on_planned:
        on_planned(len(work))
    store = Store(Path(out_dir) / STORE_DIR)
    results = build_plans([p for _, _, p in work], store, workers, on_done)
    doc = plan_document(specs, arch, work, results)
    write_json(Path(out_dir) / PLAN_FILE, doc)
    return doc


def plan_document(specs: Sequence[KernelSpec], arch: str, work: list, results: dict) -> dict:
    """The tune_plan.json content: per variant, candidates that built and those dropped."""
    variants = {s.variant: _variant_entry(s) for s in specs}
    for spec, cand, p in work:
        outcome = results.get(p.key)
        row = _candidate_entry(cand, p.key)
        if isinstance(outcome, BaseException) or outcome is None:
            reason = str(outcome).strip().splitlines()[0] if outcome is not None else "not built"
            variants[spec.variant]["dropped"].append(row | {"reason": reason})
        else:
            variants[spec.variant]["candidates"].append(
                row | {"registers": outcome.manifest.get("registers")}
            )
    return {
        "format": PLAN_FORMAT,
        "arch": arch,
        "store": STORE_DIR,
        "compressc": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": list(variants.values()),
    }


def _variant_entry(spec: KernelSpec) -> dict:
    return {
        "variant": spec.variant,
        "kernel": spec.kernel,
        "head_size": spec.head,
        "quant_block": spec.quant_block,
        "rope": spec.rope,
        "weight_dtype": spec.weight_dtype,
        "cache_format": spec.cache_format,
        "rotate": spec.rotate,
        "state_layout": spec.state_layout,
        "candidates": [],
        "dropped": [],
    }


def _candidate_entry(cand: Candidate, key: str) -> dict:
    return {"pipeline": cand.pipeline, "origin": cand.origin, "schedule": cand.summary, "key": key}


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
