"""`compressc tune`: candidate enumeration, prepare (real builds), measure's CPU-side errors, apply."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from no_cutlass import NO_CUTLASS

from compressc.cli import main
from compressc.driver.plan import plan
from compressc.ir.from_spec import module_from_spec
from compressc.ir.printer import print_module
from compressc.passes import tuned as tuned_mod
from compressc.passes.manager import (
    DEFAULT_FETCH,
    DEFAULT_PIPELINE,
    PassManager,
    parse_pipeline,
    pipeline_string,
    resolve_pipeline,
)
from compressc.specs.family import make_spec
from compressc.specs.matrix import default_specs
from compressc.tune.candidates import MAX_CANDIDATES, candidates
from compressc.tune.cases import cases_for
from compressc.tune.measure import FAMILY
from compressc.tune.prepare import PLAN_FILE, plan_document

ROOT = Path(__file__).resolve().parents[1]
ARCH = "sm_90a"
C4A = make_spec("c4a", 512, 64, weight_dtype="bf16")
DERIVED = pipeline_string(parse_pipeline(DEFAULT_PIPELINE))
TUNED_C4A = (f"thread-map{{elems-per-lane=4,window-split=2}},vectorize,lower-reduction,plan-smem,"
             f"{DEFAULT_FETCH}")
HAS_BUILD = all(importlib.util.find_spec(m) is not None for m in ("cutlass", "cuda.bindings.nvjitlink"))



@pytest.fixture(autouse=True)
def no_shipped_tuning(tmp_path_factory, monkeypatch):
    """These tests start from an empty tuned table, whatever the package ships."""
    empty = tmp_path_factory.mktemp("tuned") / "tuned.json"
    empty.write_text("{}\n")
    monkeypatch.setattr(tuned_mod, "TUNED_FILE", empty)

def _tune(*args: str):
    return CliRunner().invoke(main, ["tune", *args])


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("Error: ") : -1]


# -- candidates ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", default_specs(), ids=lambda s: s.variant)
def test_candidates_are_legal_distinct_and_start_with_derived_and_baseline(spec) -> None:
    module = module_from_spec(spec)
    found = candidates(spec, ARCH, tuned={})
    assert 2 <= len(found) <= MAX_CANDIDATES
    # the derived pipeline plus the target's passes
    derived = pipeline_string(parse_pipeline(resolve_pipeline(DERIVED, module, ARCH)))
    assert (found[0].origin, found[0].pipeline) == ("derived", derived)
    baseline = pipeline_string(parse_pipeline(resolve_pipeline("baseline", module, ARCH)))
    assert (found[1].origin, found[1].pipeline) == ("baseline", baseline)
    lowered = [print_module(PassManager(parse_pipeline(c.pipeline)).run(module)) for c in found]  # verifies
    assert len(set(lowered)) == len(found)
    assert all(c.pipeline == pipeline_string(parse_pipeline(c.pipeline)) for c in found)  # canonical


def test_window_kernels_search_split_and_rows_and_others_do_not() -> None:
    c128 = candidates(make_spec("c128a_compress", 512, 64, weight_dtype="f32"), ARCH, tuned={})
    assert {c.schedule["window_split"] for c in c128} >= {1, 2, 4}
    assert {c.schedule["rows_in_flight"] for c in c128} >= {1, 2, 4, 8}
    assert {c.schedule["elems_per_lane"] for c in c128} >= {2, 4, 8}
    store = candidates(make_spec("c128a_store", 512, 64, weight_dtype="bf16"), ARCH, tuned={})
    assert all("window-split" not in c.pipeline for c in store if c.origin == "search")
    assert {c.schedule["elems_per_lane"] for c in store} == {2, 4, 8}


def test_c128a_split_searches_grid_split_lanes_and_the_occupancy_hint() -> None:
    """Its own list (the generic one would try 8 channels a lane, which spill, and no grid-split)."""
    for weight in ("bf16", "f32"):
        found = candidates(make_spec("c128a_split", 512, 64, weight_dtype=weight), ARCH, tuned={})
        assert len(found) == 38 and [c.origin for c in found[:2]] == ["derived", "baseline"]
        split = [c.schedule for c in found if c.schedule.get("split_merge") == "global"]
        # all but the baseline (one CTA a row, no merge) and the 4 cluster merges (no split_merge)
        clusters = {(s["cluster_split"], s.get("min_ctas_per_sm")) for s in (c.schedule for c in found)
                    if s.get("cluster_split") and not s.get("split_merge")}
        assert len(split) == len(found) - 5 and clusters == set(product((8, 4), (2, None)))
        lanes = {(s["cluster_split"], s["elems_per_lane"], s["window_split"], s.get("min_ctas_per_sm"))
                 for s in split}
        assert lanes >= set(product((8, 4), (4, 2), (1, 2, 4), (2, None)))
        assert {s["cluster_split"] for s in split} == {8, 4, 2}
        assert {c.summary.split()[-1] for c in found if "tiled8 occ2 split" in c.summary} >= {"byrow", "l2pf"}
        assert all(s["elems_per_lane"] <= 4 for s in split)


def test_limit_and_the_tuned_entry_come_first() -> None:
    assert [c.origin for c in candidates(C4A, ARCH, limit=2, tuned={})] == ["derived", "baseline"]
    table = {ARCH: {C4A.variant: {"pipeline": TUNED_C4A}}}
    found = candidates(C4A, ARCH, tuned=table)
    assert (found[2].origin, found[2].pipeline) == ("tuned", TUNED_C4A)
    assert sum(c.pipeline == TUNED_C4A for c in found) == 1


# -- the tuned table and the default pipeline -----------------------------------------------------
def test_default_is_tuned_per_variant_and_arch_and_derived_is_never() -> None:
    module = module_from_spec(C4A)
    table = {ARCH: {C4A.variant: {"pipeline": TUNED_C4A}}}
    assert resolve_pipeline("default", module, ARCH, table) == TUNED_C4A
    assert resolve_pipeline("derived", module, ARCH, table) == DEFAULT_PIPELINE
    assert resolve_pipeline("default", module, None, table) == DEFAULT_PIPELINE  # no arch: derived
    assert resolve_pipeline("default", module, "sm_100a", table) == DEFAULT_PIPELINE
    other = module_from_spec(make_spec("c4a", 512, 64, weight_dtype="f32"))
    assert resolve_pipeline("default", other, ARCH, table) == DEFAULT_PIPELINE
    assert parse_pipeline("derived") == parse_pipeline(DEFAULT_PIPELINE)


def test_an_absent_or_empty_file_is_no_entries_and_a_bad_one_names_itself(tmp_path: Path) -> None:
    assert tuned_mod.load_tuned(tmp_path / "none.json") == {}
    (tmp_path / "empty.json").write_text("\n")
    assert tuned_mod.load_tuned(tmp_path / "empty.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text('{"sm_90a": {"v": {"score_us": 1}}}')
    with pytest.raises(
        tuned_mod.TunedFileError, match=r"bad.json: \['sm_90a'\]\['v'\] needs a 'pipeline' string"
    ):
        tuned_mod.load_tuned(bad)


def test_the_shipped_table_is_valid() -> None:
    table = tuned_mod.load_tuned()
    for arch, variants in table.items():
        for variant, entry in variants.items():
            spec = next(s for s in default_specs() if s.variant == variant)
            PassManager(parse_pipeline(entry["pipeline"])).run(module_from_spec(spec))
            assert arch.startswith("sm_")


def _results(tmp_path: Path, pipeline: str = TUNED_C4A, spec=C4A) -> Path:
    """A `tune --measure` results file, as the GPU host writes it, for `spec` (C4A bf16)."""
    us = {"p32": 4.0, "d32": 5.0}
    winner = {
        "pipeline": pipeline,
        "origin": "search",
        "schedule": "e4 x2 256t r4",
        "score_us": 4.47,
        "derived_score_us": 5.1,
        "baseline_score_us": 9.0,
    }
    variant = {
        "variant": spec.variant,
        "kernel": spec.kernel,
        "head_size": spec.head,
        "quant_block": spec.quant_block,
        "rope": spec.rope,
        "weight_dtype": spec.weight_dtype,
        "candidates": [{"pipeline": pipeline, "us": us}],
        "winner": winner,
    }
    doc = {
        "format": 1,
        "arch": ARCH,
        "gpu": "NVIDIA H200",
        "driver": "580.1",
        "date": "2026-11-29",
        "reps": 48,
        "variants": [variant],
    }
    path = tmp_path / "tune_results.json"
    path.write_text(json.dumps(doc))
    return path


def test_apply_writes_the_table_and_default_picks_it_up(tmp_path: Path) -> None:
    data = tmp_path / "tuned.json"
    data.write_text(json.dumps({"sm_100a": {"x": {"pipeline": "thread-map"}}}))
    result = _tune("--apply", str(_results(tmp_path)), "--data", str(data))
    assert result.exit_code == 0, result.output
    assert f"{C4A.variant}@{ARCH}: 4.47 us (1.14x vs derived)" in result.stdout
    table = tuned_mod.load_tuned(data)
    assert table["sm_100a"] == {"x": {"pipeline": "thread-map"}}  # other archs are kept
    assert table[ARCH][C4A.variant] == {
        "pipeline": TUNED_C4A,
        "score_us": 4.47,
        "derived_score_us": 5.1,
        "baseline_score_us": 9.0,
        "gpu": "NVIDIA H200",
        "date": "2026-11-29",
    }
    assert resolve_pipeline("default", module_from_spec(C4A), ARCH, table) == TUNED_C4A


def test_apply_records_a_c128a_split_winner_and_refuses_an_illegal_split(tmp_path: Path) -> None:
    split = make_spec("c128a_split", 512, 64, weight_dtype="bf16")
    found = candidates(split, ARCH, tuned={})
    (four,) = [c.pipeline for c in found if c.summary == "e4 x2 256t r8 tiled8 occ2 split4"]
    data = tmp_path / "tuned.json"
    result = _tune("--apply", str(_results(tmp_path, four, split)), "--data", str(data))
    assert result.exit_code == 0, result.output
    assert f"{split.variant}@{ARCH}: 4.47 us (1.14x vs derived): {four}" in " ".join(result.stdout.split())
    table = tuned_mod.load_tuned(data)
    assert table[ARCH][split.variant]["pipeline"] == four
    assert resolve_pipeline("default", module_from_spec(split), ARCH, table) == four
    sibling = make_spec("c128a_split", 512, 64, weight_dtype="bf16", cache_format="full_bf16")
    assert resolve_pipeline("default", module_from_spec(sibling), ARCH, table) == four  # inherited
    kw = {"fingerprint": "f" * 64, "toolchain": {"cutlass": "x"}}
    assert plan(split, "sm90", four, **kw).key != plan(split, "sm90", "derived", **kw).key
    sixteen = four.replace("grid-split=4", "grid-split=16")  # the workspace holds 8 partials a row
    message = _error(_tune("--apply", str(_results(tmp_path, sixteen, split)), "--data", str(data)))
    assert message.startswith(f"{tmp_path / 'tune_results.json'}: the winner of {split.variant} is no longer "
                              "legal (thread-map{elems-per-lane=4,window-split=2,grid-split=16} cannot lower")
    assert message.endswith("grid-split=16: must be one of 1, 2, 4, 8 (CTAs per window, 8 at most)); "
                            "measure again")


def test_a_tuned_entry_changes_the_default_key_to_the_tuned_pipelines_key(tmp_path, monkeypatch) -> None:
    kw = {"fingerprint": "f" * 64, "toolchain": {"cutlass": "x"}}
    before = plan(C4A, "sm90", "default", **kw)
    data = tmp_path / "tuned.json"
    tuned_mod.write_tuned({ARCH: {C4A.variant: {"pipeline": TUNED_C4A}}}, data)
    monkeypatch.setattr(tuned_mod, "TUNED_FILE", data)
    after = plan(C4A, "sm90", "default", **kw)
    assert before.key == plan(C4A, "sm90", "derived", **kw).key != after.key
    assert after.key == plan(C4A, "sm90", TUNED_C4A, **kw).key and after.pipeline == TUNED_C4A


def test_apply_refuses_an_illegal_winner_and_a_non_results_file(tmp_path: Path) -> None:
    bad = _results(
        tmp_path, f"thread-map{{elems-per-lane=3}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}"
    )
    message = _error(_tune("--apply", str(bad), "--data", str(tmp_path / "t.json")))
    assert message.startswith(f"{bad}: the winner of {C4A.variant} is no longer legal (")
    assert not (tmp_path / "t.json").exists()
    other = tmp_path / "other.json"
    other.write_text("[]")
    assert _error(_tune("--apply", str(other))) == (
        f"{other}: not a `compressc tune --measure` results file (no arch/variants)"
    )


def test_opt_and_emit_say_which_default_they_used(tmp_path: Path, monkeypatch) -> None:
    result = CliRunner().invoke(main, ["opt", "--spec", "c4a"])
    assert result.exit_code == 0, result.output
    assert (
        result.stderr
        == f"// pipeline 'default' = derived (no tuned entry for {C4A.variant} @ sm_90a in tuned.json)\n"
    )
    data = tmp_path / "tuned.json"
    tuned_mod.write_tuned(
        {ARCH: {C4A.variant: {"pipeline": TUNED_C4A, "score_us": 4.5, "gpu": "H200", "date": "2026-11-29"}}},
        data,
    )
    monkeypatch.setattr(tuned_mod, "TUNED_FILE", data)
    result = CliRunner().invoke(main, ["opt", "--spec", "c4a", "--arch", "sm90"])
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"// pipeline 'default' = tuned for {C4A.variant} @ sm_90a (H200, 2026-11-29, score 4.50 us)\n"
    )
    assert result.stdout == print_module(PassManager(parse_pipeline(TUNED_C4A)).run(module_from_spec(C4A)))
    emitted = CliRunner().invoke(main, ["emit", "--spec", "c4a"])
    assert emitted.exit_code == 0 and emitted.stderr.startswith("// pipeline 'default' = tuned for")
    derived = CliRunner().invoke(main, ["emit", "--spec", "c4a", "-p", "derived"])
    assert derived.exit_code == 0 and derived.stderr == ""


# -- prepare ------------------------------------------------------------------------------------
def test_plan_document_lists_failed_builds_as_dropped() -> None:
    found = candidates(C4A, ARCH, limit=2, tuned={})
    work = [(C4A, c, plan(C4A, ARCH, c.pipeline, fingerprint="f" * 64, toolchain={"a": "b"})) for c in found]

    class Entry:
        manifest = {"registers": 40}

    err = RuntimeError("cutlass_c4a uses local memory: 64 bytes stack, 8 bytes spill stores\nptxas log ...")
    doc = plan_document([C4A], ARCH, work, {work[0][2].key: Entry(), work[1][2].key: err})
    (variant,) = doc["variants"]
    assert [c["origin"] for c in variant["candidates"]] == ["derived"]
    assert variant["candidates"][0]["registers"] == 40
    (dropped,) = variant["dropped"]
    assert dropped["origin"] == "baseline"
    assert dropped["reason"] == "cutlass_c4a uses local memory: 64 bytes stack, 8 bytes spill stores"


@pytest.mark.skipif(not HAS_BUILD, reason="needs the build extra (nvidia-cutlass-dsl, nvjitlink)")
def test_prepare_builds_the_candidates_of_a_subset(tmp_path: Path) -> None:
    from compressc.cache.store import Store

    out = tmp_path / "tune"
    result = _tune(
        "--arch",
        "sm90",
        "--prepare",
        str(out),
        "--spec",
        "indexer_fp8",
        "--weight-dtype",
        "bf16",
        "--no-rotate",
        "--limit",
        "3",
        "-j",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "indexer_fp8_h128_q128_r64_bf16@sm_90a: 3 candidates, 0 dropped" in result.stdout
    assert f"python -m compressc.cli tune --measure {out}" in result.stdout
    doc = json.loads((out / PLAN_FILE).read_text())
    assert doc["arch"] == ARCH and [v["variant"] for v in doc["variants"]] == [
        "indexer_fp8_h128_q128_r64_bf16"
    ]
    cands = doc["variants"][0]["candidates"]
    assert [c["origin"] for c in cands] == ["derived", "baseline", "search"]
    store = Store(out / doc["store"], readonly=True)
    spec = make_spec("indexer_fp8", 128, 128, weight_dtype="bf16")
    for c in cands:
        entry = store.get(c["key"])
        assert entry is not None and entry.manifest["pipeline"] == c["pipeline"]
        assert c["key"] == plan(spec, ARCH, c["pipeline"]).key  # what `compressc build -p PIPELINE` makes
    assert cands[0]["key"] == plan(spec, "sm90", "derived").key
    again = _tune("--arch", "sm90", "--prepare", str(out), "--spec", "indexer_fp8", "--weight-dtype", "bf16",
                  "--no-rotate", "--limit", "3", "-j", "1", "--json")  # the candidates are cached now
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {
        "plan": str(out / PLAN_FILE),
        "arch": ARCH,
        "variants": [{"variant": "indexer_fp8_h128_q128_r64_bf16", "candidates": 3, "dropped": []}],
    }


# -- measure (its GPU part runs on the device machine) --------------------------------------------
def test_cases_cap_c128a_decode_and_labels() -> None:
    assert [c.label for c in cases_for("c4a")] == [
        "p32",
        "p512",
        "p1024",
        "p4096",
        "p16384",
        "d32",
        "d512",
        "d1024",
        "d4096",
        "d16384",
    ]
    assert [c.label for c in cases_for("c128a", ["decode"])] == ["d32", "d512", "d1024", "d4096"]
    # tune measures these (csa is not tuned: its parts are, docs/kernels.md §12)
    assert set(FAMILY) == {s.kernel for s in default_specs() if not s.segmented and s.kernel != "csa"}
    # c128a_split at its own few-row cases (issue 16), unless --T names others; --scenario filters
    assert [c.label for c in cases_for("c128a_split")] == ["d1", "d32", "p128", "p512"]
    assert [c.label for c in cases_for("c128a_split", ["prefill"])] == ["p128", "p512"]
    assert [c.label for c in cases_for("c128a_split", ["decode"], [64])] == ["d64"]


def test_scores_are_geometric_means_and_the_lowest_never_slower_than_baseline_wins() -> None:
    from compressc.tune.measure import _Variant, _variant_result

    entry = {
        "variant": C4A.variant,
        "kernel": "c4a",
        "head_size": 512,
        "quant_block": 64,
        "rope": 64,
        "weight_dtype": "bf16",
        "dropped": [],
        "candidates": [
            {"pipeline": p, "origin": o, "schedule": "s", "key": "k"}
            for p, o in (("a", "derived"), ("b", "baseline"), ("c", "search"))
        ],
    }
    v = _Variant(entry, C4A, [None, None, None])
    v.us = [{"p32": 4.0, "d32": 8.2}, {"p32": 8.0, "d32": 8.0}, {"p32": 2.0, "d32": 16.0}]
    result = _variant_result(v)
    scores = [c["score_us"] for c in result["candidates"]]
    assert scores == [pytest.approx(math.sqrt(32.8), abs=1e-3), 8.0, pytest.approx(math.sqrt(32), abs=1e-3)]
    # "c" scores best but doubles d32 against the baseline; "a" is within the 3% slack
    assert result["winner"] | {"score_us": 0} == {
        "pipeline": "a",
        "origin": "derived",
        "schedule": "s",
        "score_us": 0,
        "derived_score_us": scores[0],
        "baseline_score_us": 8.0,
        "never_slower_than_baseline": True,
    }
    # the baseline itself is always eligible: when it is fastest everywhere it wins
    v.us = [{"p32": 4.0, "d32": 9.0}, {"p32": 1.0, "d32": 1.0}, {"p32": 2.0, "d32": 16.0}]
    result = _variant_result(v)
    assert result["winner"]["pipeline"] == "b"
    v.entry["candidates"][1]["origin"] = "search"  # no baseline measured: the lowest score wins
    v.us[1] = {"p32": 3.0, "d32": 3.0}
    assert _variant_result(v)["winner"]["pipeline"] == "b"
    v.us[1] = {"p32": 9.0, "d32": 9.0}
    winner = _variant_result(v)["winner"]
    assert winner["pipeline"] == "c" and "never_slower_than_baseline" not in winner


def test_never_slower_allows_the_noise_of_a_short_launch() -> None:
    from compressc.tune.measure import never_slower

    base = {"p32": 3.17, "d1024": 130.88}
    assert never_slower({"p32": 3.33, "d1024": 134.0}, base)  # +0.16 us; +2.4%
    assert not never_slower({"p32": 3.45, "d1024": 134.0}, base)  # +0.28 us is more than noise at 3 us
    assert not never_slower({"p32": 3.33, "d1024": 135.06}, base)  # +3.2%
    assert never_slower({"p32": 3.0, "x": 99.0}, base)  # cases the baseline lacks are not compared


_MEASURE_WITHOUT_CUTLASS = NO_CUTLASS + """
from compressc.cli import main
from compressc.passes.manager import DEFAULT_FETCH
main(["tune", "--measure", sys.argv[1]])
"""


def _measure_without_gpu(plan_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", _MEASURE_WITHOUT_CUTLASS, str(plan_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_measure_without_a_gpu_is_one_clear_line_and_never_imports_cutlass(tmp_path: Path) -> None:
    (tmp_path / PLAN_FILE).write_text(
        json.dumps({"format": 1, "arch": ARCH, "store": "store", "variants": []})
    )
    done = _measure_without_gpu(tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "Error: tune --measure needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
        "run it on the GPU host with the prepared DIR: "
        "PYTHONPATH=. python -m compressc.cli tune --measure DIR\n"
    )


def test_measure_json_prints_the_results_document(tmp_path: Path, monkeypatch) -> None:
    import compressc.tune.measure as measure_mod

    doc = json.loads(_results(tmp_path).read_text())
    monkeypatch.setattr(measure_mod, "measure", lambda plan_dir, **kw: (kw["log"]("timing ..."), doc)[1])
    result = _tune("--measure", str(tmp_path), "--json", "--out", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == doc == json.loads((tmp_path / "r.json").read_text())
    assert "timing ..." in result.stderr and "apply it on the build host" in result.stderr


def test_apply_json_lists_the_winners(tmp_path: Path) -> None:
    data = tmp_path / "tuned.json"
    result = _tune("--apply", str(_results(tmp_path)), "--data", str(data), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["tuned"], doc["arch"]) == (str(data), ARCH)
    assert doc["winners"][C4A.variant]["pipeline"] == TUNED_C4A
    assert doc["winners"][C4A.variant]["score_us"] == 4.47


@pytest.mark.skipif(not HAS_BUILD, reason="needs the build extra (nvidia-cutlass-dsl, nvjitlink)")
def test_prepare_into_an_unwritable_dir_fails_before_compiling(tmp_path: Path) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    assert _error(_tune("--prepare", str(blocker / "tune"), "--spec", "c4a")) == (
        f"--prepare {blocker / 'tune'} is not writable (Not a directory): give a writable directory"
    )


def test_measure_without_a_plan_names_the_prepare_command(tmp_path: Path) -> None:
    assert _error(_tune("--measure", str(tmp_path))) == (
        f"{tmp_path / PLAN_FILE} not found: run `compressc tune --arch sm90 --prepare {tmp_path}` first"
    )


# -- the command line ----------------------------------------------------------------------------
def test_help_describes_the_three_steps() -> None:
    result = _tune("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for phrase in (
        "--prepare DIRECTORY",
        "--measure DIRECTORY",
        "--apply FILE",
        "geometric mean",
        "`-p derived` the un-tuned derived default",
        "compressc tune --apply build/tune/tune_results.json",
    ):
        assert phrase in text, phrase
    assert "compressc tune --arch sm90 --prepare DIR" in CliRunner().invoke(main, ["--help"]).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --prepare DIR, --measure DIR or --apply RESULTS.json"),
        (
            ["--prepare", "a", "--measure", "b"],
            "give exactly one of --prepare DIR, --measure DIR or --apply RESULTS.json",
        ),
        (["--apply", "r.json", "--reps", "3"], "--reps belongs to --measure, not --apply"),
        (["--measure", "d", "--spec", "c4a"], "--spec belongs to --prepare, not --measure"),
        (["--prepare", "d", "--data", "t.json"], "--data belongs to --apply, not --prepare"),
    ],
)
def test_misused_options_are_one_line_errors(args: list[str], message: str) -> None:
    assert _error(_tune(*args)) == message


def test_measure_inputs_pack_every_variants_abi_on_the_cpu(monkeypatch) -> None:
    """The argument side of --measure (scenario, L2 rotation, ABI packing) without a GPU."""
    from compressc.runtime import c128a_split
    from compressc.tune import measure

    monkeypatch.setattr(measure, "DEVICE", "cpu")
    monkeypatch.setattr(measure, "FLUSH_BYTES", 4 << 20)
    monkeypatch.setattr(c128a_split, "_WORKSPACE", {})
    for spec in (s for s in default_specs() if s.kernel in FAMILY):
        inputs = measure._Inputs(spec, measure.Case("decode", 32))
        packed = inputs.packed(spec)
        assert len(packed) == max(len(inputs.tables), len(inputs.kv)) >= 2
        assert inputs.sc.state_cache is None  # replaced by the rotated copies
        if spec.kernel.startswith("c128a"):
            assert len({v.data_ptr() for v in inputs.kv}) == len(inputs.kv)


def test_window_kernels_are_also_tried_with_the_softmax_rescaled_row_by_row() -> None:
    from compressc.tune.candidates import row_rescale

    assert row_rescale(f"thread-map{{grid=rows}},vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}") == (
        "thread-map{grid=rows},vectorize,lower-reduction,plan-smem,rows-in-flight,page-lookup,rescale{per=row},"
        "operand-loads,occupancy,cache-hints,overlap-launch")
    found = candidates(C4A, ARCH, 36, {})
    derived_by_row = row_rescale(f"thread-map,vectorize,lower-reduction,plan-smem,{DEFAULT_FETCH}")
    assert [c.origin for c in found if c.pipeline == derived_by_row] == ["search"]
    by_row = [c for c in found if c.schedule.get("rescale") == "row"]  # also the baseline, smem-staged
    assert "baseline" in {c.origin for c in by_row} and all(" byrow" in c.summary for c in by_row)


def test_measure_gives_c128a_split_the_runtimes_workspace_at_its_own_cases(monkeypatch) -> None:
    """As ops.compress_c128a launches it: the split ABI's values, the device's zeroed workspace of
    T rows (runtime/c128a_split.py), one per device whatever the page-table copy."""
    import torch

    from compressc.runtime import c128a_split
    from compressc.specs.abi import abi, split_workspace_row
    from compressc.tune import measure

    monkeypatch.setattr(measure, "DEVICE", "cpu")
    monkeypatch.setattr(measure, "FLUSH_BYTES", 4 << 20)
    monkeypatch.setattr(c128a_split, "_WORKSPACE", {})
    spec = make_spec("c128a_split", 512, 64, weight_dtype="f32")
    names = [p.name for p in abi(spec)]
    for case in cases_for("c128a_split"):
        inputs = measure._Inputs(spec, case)
        values = [dict(zip(names, (c.value for c in p.values), strict=True)) for p in inputs.packed(spec)]
        workspace = c128a_split.split_workspace(torch.device("cpu"), case.T, 512)
        assert workspace.shape == (case.T, split_workspace_row(512)) and not workspace.any()
        assert {v["split_workspace"] for v in values} == {workspace.data_ptr()}
        assert {v["num_rows"] for v in values} == {case.T}
        assert len({v["block_table"] for v in values}) == len(values) >= 2  # the L2 rotation
        assert {v["positions"] for v in values} == {inputs.sc.positions.data_ptr()}
        assert {v["rms_norm_weight"] for v in values} != {inputs.sc.rms_norm_weight.data_ptr()}  # f32 copy


def test_measure_takes_each_familys_cases_unless_t_is_given(tmp_path: Path, monkeypatch) -> None:
    import compressc.tune.measure as measure_mod

    doc = json.loads(_results(tmp_path).read_text())
    seen = []
    monkeypatch.setattr(measure_mod, "measure", lambda plan_dir, **kw: (seen.append(kw), doc)[1])
    assert _tune("--measure", str(tmp_path), "--json").exit_code == 0
    given = _tune("--measure", str(tmp_path), "--json", "--T", "1", "--T", "32", "--scenario", "decode")
    assert given.exit_code == 0, given.output
    assert [(kw["kinds"], kw["t_list"]) for kw in seen] == [(("prefill", "decode"), None),
                                                            (("decode",), (1, 32))]


def test_measure_runs_a_c128a_split_plan_at_its_cases(tmp_path: Path, monkeypatch) -> None:
    """The whole --measure flow on the CPU for a split plan, the kernels and events stubbed: each
    candidate is launched with T and its packed split arguments, the results name the four cases."""
    import torch

    from compressc.runtime import c128a_split
    from compressc.tune import measure

    monkeypatch.setattr(measure, "DEVICE", "cpu")
    monkeypatch.setattr(measure, "FLUSH_BYTES", 4 << 20)
    monkeypatch.setattr(c128a_split, "_WORKSPACE", {})
    monkeypatch.setattr(measure, "check_gpu", lambda arch: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub")
    launched = []
    monkeypatch.setattr(measure, "_load", lambda store, spec, arch, cand, device: (
        lambda T, packed, name=cand["schedule"]: launched.append((name, T, len(packed)))))
    monkeypatch.setattr(measure, "time_interleaved", lambda calls, packed, reps: [
        [float(len(packed) + i)] * reps for i in range(len(calls))])
    split = make_spec("c128a_split", 512, 64, weight_dtype="bf16")
    work = [(split, c, plan(split, ARCH, c.pipeline, fingerprint="f" * 64, toolchain={"a": "b"}))
            for c in candidates(split, ARCH, limit=3, tuned={})]
    doc = plan_document([split], ARCH, work, {p.key: SimpleNamespace(manifest={}) for _, _, p in work})
    (tmp_path / PLAN_FILE).write_text(json.dumps(doc))
    result = measure.measure(tmp_path, reps=4, log=lambda s: None)
    (variant,) = result["variants"]
    assert [list(c["us"]) for c in variant["candidates"]] == [["d1", "d32", "p128", "p512"]] * 3
    assert {(T, name) for name, T, _ in launched} == {
        (T, c.summary) for T in (1, 32, 128, 512) for c in candidates(split, ARCH, limit=3, tuned={})}
    assert variant["winner"]["origin"] == "derived"  # the stub times the first candidate fastest
