"""`compressc tune --measure DIR`: time every candidate of DIR's plan on this GPU.

Runs where the kernels run: torch + cuda-python, never cutlass (docs/architecture.md §2). Each
candidate is loaded by cache key from DIR/store and launched through the runtime
(`loader`, `args`, the ops' argument values) on `make_scenario` inputs at each family's
cases (`cases.py`: prefill and decode at T = 32 .. 16384 launched rows; c128a_split at decode
T = 1, 32 and prefill T = 128, 512). C128A is measured as its two kernels, each with its own ABI
arguments, and as c128a_split, given the runtime's split workspace (`runtime/c128a_split.py`).

Method: CUDA events around each call, calls queued in batches of 16 behind a
`torch.cuda._sleep` so host launch cost stays out, candidates interleaved batch by
batch, median of `reps` calls per case. Page tables (and C128A's fp32 rows) rotate
over copies of the inputs spanning 256 MB, about 5x the 50-60 MB L2, and the
rotation continues from candidate to candidate, so no call finds its rows in L2.
Score = geometric mean of the medians over the cases. The winner is the lowest score among
the candidates no slower than the baseline schedule in any case (within BASELINE_SLACK or
BASELINE_SLACK_US, the run-to-run noise of a median); the baseline itself always qualifies. A plan without a
baseline candidate picks the lowest score overall.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from compressc.tune.cases import KINDS, Case, cases_for
from compressc.tune.prepare import PLAN_FILE, PLAN_FORMAT

REPS = 64
BATCH = 16
SLEEP_CYCLES = 2_000_000  # ~1 ms at 1.98 GHz: longer than the host needs to queue one batch
FLUSH_BYTES = 256 << 20
MAX_SETS = 1024
DEVICE = "cuda"  # tests run the input preparation on "cpu"
FAMILY = {"c4a": "c4a", "indexer_fp8": "indexer_fp8", "indexer_mxfp4": "indexer_mxfp4",
          "c128a_compress": "c128a", "c128a_store": "c128a", "c128a_split": "c128a_split"}


class MeasureError(RuntimeError):
    """Measuring cannot start; the one-line message says what to do."""


def read_plan(plan_dir: Path) -> dict:
    path = Path(plan_dir) / PLAN_FILE
    if not path.is_file():
        raise MeasureError(f"{path} not found: run `compressc tune --arch sm90 --prepare {plan_dir}` first")
    doc = json.loads(path.read_text())
    if doc.get("format") != PLAN_FORMAT:
        raise MeasureError(f"{path}: format {doc.get('format')!r}, expected {PLAN_FORMAT}; prepare it again")
    return doc


def check_gpu(arch: str) -> int:
    """The device index to measure on; MeasureError when there is no GPU of `arch`."""
    import torch

    if not torch.cuda.is_available():
        raise MeasureError(
            "tune --measure needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
            "run it on the GPU host with the prepared DIR: "
            "PYTHONPATH=. python -m compressc.cli tune --measure DIR"
        )
    from compressc.runtime.resolve import arch_for_capability

    device = torch.cuda.current_device()
    have = arch_for_capability(torch.cuda.get_device_capability(device))
    if have != arch:
        raise MeasureError(
            f"the plan's kernels are for {arch} but cuda:{device} is {have}: "
            f"prepare for this GPU with `compressc tune --arch {have} --prepare DIR`"
        )
    return device


def measure(
    plan_dir: Path,
    *,
    kinds: Sequence[str] = KINDS,
    t_list: Sequence[int] | None = None,
    reps: int = REPS,
    log: Callable[[str], None] = print,
) -> dict:
    """Time every candidate of the plan in `plan_dir` at its family's cases in `kinds` (at
    kinds x `t_list` when given); return the results document."""
    plan = read_plan(plan_dir)
    device = check_gpu(plan["arch"])
    import torch

    from compressc.cache.store import Store

    store = Store(Path(plan_dir) / plan["store"], readonly=True)
    variants = [_Variant.load(v, plan["arch"], store, device) for v in plan["variants"] if v["candidates"]]
    started = time.perf_counter()
    for group in _groups(variants):
        for case in cases_for(FAMILY[group[0].spec.kernel], kinds, t_list):
            inputs = _Inputs(group[0].spec, case)
            for v in group:
                v.run(inputs, reps)
            log(
                f"  {FAMILY[group[0].spec.kernel]} {case.kind} T={case.T}: {len(group)} variants, "
                f"{time.perf_counter() - started:.0f} s"
            )
            del inputs
            torch.cuda.empty_cache()
    return _document(plan, variants, reps)


def _groups(variants: list[_Variant]) -> list[list[_Variant]]:
    """Variants that share inputs: same family and head/quant-block/rope."""
    groups: dict[tuple, list[_Variant]] = {}
    for v in variants:
        s = v.spec
        groups.setdefault((FAMILY[s.kernel], s.head, s.quant_block, s.rope), []).append(v)
    return list(groups.values())


class _Variant:
    def __init__(self, entry: dict, spec, launches: list) -> None:
        self.entry, self.spec, self.launches = entry, spec, launches
        self.us: list[dict[str, float]] = [{} for _ in launches]

    @classmethod
    def load(cls, entry: dict, arch: str, store, device: int) -> _Variant:
        from compressc.specs.family import make_spec

        spec = make_spec(
            entry["kernel"],
            entry["head_size"],
            entry["quant_block"],
            rope=entry["rope"],
            weight_dtype=entry["weight_dtype"],
            cache_format=entry.get("cache_format") or None,  # plans of older compressc lack the axes
            rotate=bool(entry.get("rotate", False)),
            state_layout=entry.get("state_layout", "paged"),
        )
        if spec.variant != entry["variant"]:
            raise ValueError(f"plan variant {entry['variant']!r} is not {spec.variant!r}: its axes are "
                             "missing (re-run compressc tune --prepare)")
        return cls(entry, spec, [_load(store, spec, arch, c, device) for c in entry["candidates"]])

    def run(self, inputs: _Inputs, reps: int) -> None:
        packed = inputs.packed(self.spec)
        T = inputs.case.T
        calls = [lambda p, launch=launch: launch(T, p) for launch in self.launches]
        for call in calls:  # warm-up; a failing launch surfaces at the synchronize
            call(packed[0])
        times = time_interleaved(calls, packed, reps)
        for us, t in zip(self.us, times, strict=True):
            us[inputs.case.label] = round(statistics.median(t), 3)


def _load(store, spec, arch: str, cand: dict, device: int):
    from compressc.runtime.loader import load_kernel
    from compressc.runtime.resolve import KernelImage, check_manifest

    entry = store.get(cand["key"])
    if entry is None:
        raise MeasureError(
            f"{store.root} lacks {spec.variant} with {cand['pipeline']} (key {cand['key'][:12]}): "
            "carry the whole prepared DIR to this host"
        )
    image = KernelImage(dict(entry.manifest), entry.cubin_bytes(), f"tune store ({entry.path})")
    check_manifest(spec, arch, image.manifest)
    kernel = load_kernel(image, device)
    return getattr(kernel, "launch_rows", kernel.launch)  # launch_rows applies the manifest's grid rule


def time_interleaved(calls: list[Callable], packed: list, reps: int) -> list[list[float]]:
    """Per call, `reps` event times in µs; batches of the calls alternate, inputs keep rotating."""
    import torch

    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(BATCH)
    ]
    times: list[list[float]] = [[] for _ in calls]
    step = 0
    for _ in range(math.ceil(reps / BATCH)):
        for i, call in enumerate(calls):
            torch.cuda._sleep(SLEEP_CYCLES)
            for e0, e1 in events:
                e0.record()
                call(packed[step % len(packed)])
                e1.record()
                step += 1
            torch.cuda.synchronize()
            times[i] += [e0.elapsed_time(e1) * 1e3 for e0, e1 in events]
    return [t[:reps] for t in times]


class _Inputs:
    """One case's inputs, shared by the variants of a family, rotated to defeat the L2."""

    def __init__(self, spec, case: Case) -> None:
        import torch

        from compressc.scenarios import make_scenario
        from compressc.specs.family import make_spec

        self.case = case
        self.pool_spec = spec
        if FAMILY[spec.kernel] == "c128a" and spec.state_layout == "paged":
            self.pool_spec = make_spec(
                "c128a_compress", spec.head, spec.quant_block, rope=spec.rope, weight_dtype="f32"
            )
        sc = make_scenario(self.pool_spec, case.kind, case.T, device=DEVICE, seed=case.T, weight_dtype="bf16")
        self.tables, self.state = _rotated_state(sc)
        sc.state_cache = None  # the rotated copies replace it; free its GPU memory now
        self.sc = sc
        self.kv: list = []
        if FAMILY[spec.kernel] == "c128a":
            sets = _sets(case.T * spec.head * 4)
            buf = torch.randn((sets * case.T, spec.head), device=DEVICE, dtype=torch.float32)
            self.kv = [buf[k * case.T : (k + 1) * case.T] for k in range(sets)]

    def packed(self, spec) -> list:
        """Packed kernel parameters of `spec`, one per rotation set."""
        import torch

        from compressc.runtime.c128a_split import split_workspace
        from compressc.runtime.ops import _common_values
        from compressc.specs.family import make_spec

        sc, store_spec = self.sc, spec
        if spec.kernel == "c128a_compress":
            store_spec = make_spec(
                "c128a_store", spec.head, spec.quant_block, rope=spec.rope, weight_dtype="bf16"
            )
        weight = sc.rms_norm_weight.to(torch.float32 if store_spec.weight_dtype == "f32" else torch.bfloat16)
        if spec.state_layout == "ring":
            return self._pack(spec, _ring_values(spec, sc, self.state, self.tables[0]))
        args = dict(
            state_cache=self.state,
            token_to_req_indices=sc.token_to_req_indices,
            positions=sc.positions,
            slot_mapping=sc.slot_mapping,
            block_table=self.tables[0],
            block_size=sc.block_size,
            rms_norm_weight=weight,
            rms_norm_eps=sc.rms_norm_eps,
            cos_sin_cache=sc.cos_sin_cache,
            k_cache=_cache_for(store_spec, sc),
            kv_slot_mapping=sc.kv_slot_mapping,
            kv_cache_block_size=sc.kv_cache_block_size,
            fp8_scale=torch.ones(1, device=sc.device) if store_spec.cache_format == "full_fp8" else None,
        )
        values = _common_values(store_spec, args, self.pool_spec)
        if spec.kernel == "c128a_split":  # the runtime's workspace: zeroed once, left zeroed by each launch
            values["split_workspace"] = split_workspace(
                sc.positions.device, int(values["num_rows"]), spec.head).data_ptr()
        return self._pack(spec, values)

    def _pack(self, spec, values: dict) -> list:
        from compressc.runtime.args import pack_args
        from compressc.runtime.validate import compressed_values
        from compressc.specs.abi import abi

        params = abi(spec)
        out = []
        for k in range(max(len(self.tables), len(self.kv))):
            v = values | {"block_table": self.tables[k % len(self.tables)].data_ptr()}
            if self.kv:
                v |= compressed_values(self.pool_spec, self.kv[k % len(self.kv)], self.case.T)
            out.append(pack_args(params, {p.name: v[p.name] for p in params})[1])
        return out


def _cache_for(spec, sc):
    """A zeroed k_cache of `spec`'s format with as many pages as the scenario's (the family's
    variants share one scenario; their cache formats differ)."""
    import torch

    from compressc.scenarios import page_bytes

    B = sc.kv_cache_block_size
    stride = page_bytes(spec, B)
    return torch.zeros((sc.k_cache.shape[0], B, stride // B), dtype=torch.uint8, device=sc.device)


def _ring_values(spec, sc, state, table) -> dict:
    """The ring compress kernel's ABI values (docs/kernels.md §10) over the rotated ring copies."""
    from compressc.runtime import ring, validate

    values = validate.row_values(sc.token_to_req_indices, sc.positions, sc.slot_mapping, sc.kv_slot_mapping)
    values |= ring.ring_state_values(spec, state, table, sc.capacity)
    return values | ring.ring_input_values(spec, sc.kv, sc.score, sc.ape, sc.query_start_loc, sc.T)


def _sets(bytes_per_set: int) -> int:
    """Copies of the inputs whose total reaches FLUSH_BYTES (at least 2, at most MAX_SETS)."""
    return max(2, min(MAX_SETS, math.ceil(FLUSH_BYTES / max(bytes_per_set, 1))))


def _rotated_state(sc) -> tuple[list, object]:
    """Page tables into disjoint copies of the state pages (random fp32 rows on the GPU)."""
    import torch

    used = sc.state_cache.shape[0]
    sets = _sets(sc.state_cache.numel() * 4)
    pool = torch.randn((used * sets, *sc.state_cache.shape[1:]), device=DEVICE, dtype=torch.float32)
    table = sc.block_table
    return [torch.where(table >= 0, table + k * used, table) for k in range(sets)], pool


# -- results -------------------------------------------------------------------------------
def _document(plan: dict, variants: list[_Variant], reps: int) -> dict:
    import torch

    return {
        "format": 1,
        "arch": plan["arch"],
        "gpu": torch.cuda.get_device_name(),
        "driver": driver_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "reps": reps,
        "variants": [_variant_result(v) for v in variants],
    }


def _variant_result(v: _Variant) -> dict:
    rows = []
    for cand, us in zip(v.entry["candidates"], v.us, strict=True):
        score = math.exp(statistics.fmean(math.log(max(x, 1e-3)) for x in us.values()))
        rows.append({**cand, "us": us, "score_us": round(score, 3)})
    base = next((r["us"] for r in rows if r["origin"] == "baseline"), None)
    safe = [r for r in rows if base is None or never_slower(r["us"], base)]
    best = min(safe or rows, key=lambda r: r["score_us"])
    by_origin = {r["origin"]: r["score_us"] for r in rows}
    keep = ("kernel", "head_size", "quant_block", "rope", "weight_dtype")
    winner = {k: best[k] for k in ("pipeline", "origin", "schedule", "score_us")}
    winner |= {f"{o}_score_us": by_origin[o] for o in ("derived", "baseline") if o in by_origin}
    if base is not None:  # True by construction; the entry says which rule chose it
        winner["never_slower_than_baseline"] = never_slower(best["us"], base)
    return {
        "variant": v.entry["variant"],
        **{k: v.entry[k] for k in keep},
        "candidates": rows,
        "dropped": v.entry.get("dropped", []),
        "winner": winner,
    }


BASELINE_SLACK = 0.03  # medians of the same kernel move by a few percent between runs
BASELINE_SLACK_US = 0.25  # and by 0.1-0.2 us at the 3 us of a launch with no active row


def never_slower(us: dict[str, float], baseline: dict[str, float]) -> bool:
    """Whether every case is within BASELINE_SLACK (or BASELINE_SLACK_US, whichever is more)
    of the baseline schedule's time."""
    return all(t <= max(baseline[case] * (1 + BASELINE_SLACK), baseline[case] + BASELINE_SLACK_US)
               for case, t in us.items() if case in baseline)


def driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
