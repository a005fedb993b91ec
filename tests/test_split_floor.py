"""The split_floor probe builds here: every kernel to a cubin with the shipped kernel's ABI, block,
occupancy hint and launch rule, no spills; its measure step's grids, argument packing and table
checked without a GPU (a fake timer and fake kernels)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks import split_floor as sf
from compressc.specs.abi import abi
from compressc.specs.launch import GridRule


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("cutlass")
    out = tmp_path_factory.mktemp("split-floor")
    assert sf.build(out) == 0
    return out


def _manifest(root, slug: str) -> dict:
    return json.loads((root / f"{slug}.json").read_text())


def test_every_kernel_builds_without_spills_to_the_shipped_abi(built):
    from compressc.cache.integrity import cubin_problem

    for slug in sf.slugs():
        m = _manifest(built, slug)
        assert (m["spill_stores"], m["spill_loads"], m["stack"]) == (0, 0, 0), slug
        assert m["block"] == [256, 1, 1] and m["registers"] <= 128  # 2 CTAs of 256 threads an SM
        assert [p["name"] for p in m["params"]] == [p.name for p in abi(sf.SPEC)]  # one packing serves all
        assert cubin_problem(m, (built / m["cubin"]).read_bytes()) is None  # the cubin's .nv.info agrees
        assert ".minnctapersm 2" in (built / f"{slug}.ptx").read_text()
    grids = {_manifest(built, s)["probe"]: _manifest(built, s)["grid"] for s in sf.slugs()}
    assert grids["shipped split8"] == "wave:8,split:8" and grids["cluster8 occ2"] == "wave:8,cluster:8"
    assert {n: g for n, g in grids.items() if n in sf.PROBES} == {
        n: "wave:8,cluster:8" if p.cluster else "wave:8,split:8" for n, p in sf.PROBES.items()}


def test_the_real_kernels_are_the_shipped_builds(built):
    from compressc.driver.plan import plan

    for name, pipeline in sf.REAL.items():
        m = _manifest(built, sf.real_slug(name))
        assert m["key"] == plan(sf.SPEC, sf.ARCH, pipeline).key  # the cache key the runtime / tuner use
    assert _manifest(built, sf.real_slug("cluster8 occ2"))["smem_static"] == 43056  # docs/kernels.md §13


PTX = {  # probe -> instruction -> count in its PTX
    "empty": {"ld.global": 0, "atom.": 0, "barrier.cluster": 0},
    "meta": {"ld.global.L1::no_allocate.L2::cache_hint.f32": 1, "atom.": 0},
    "window": {"ld.global.L1::no_allocate.L2::cache_hint.v4.f32": 16, "atom.": 0, "st.global": 1},
    "window+global": {"atom.acq_rel.gpu.global.inc.u32": 1, "fence.acq_rel.gpu": 2,
                      "ld.global.cg.v2.f32": 24},
    "window+global+store": {"st.global.L2::cache_hint.v4.b32": 1, "ld.global.cg.v2.f32": 24},
    "window+softmax+global+store": {"ex2.approx": 8 + 32 + 28, "st.global.L2::cache_hint.v4.b32": 1},
    "window+cluster": {"barrier.cluster.arrive.release.aligned": 2, "st.shared::cluster.f32": 12,
                       "mapa.shared::cluster": 12, "atom.": 0, "fence.": 0},
    "empty+cluster": {"barrier.cluster": 0, "ld.global": 0},
}


@pytest.mark.parametrize("name", list(sf.PROBES))
def test_each_probe_runs_the_steps_it_names(built, name):
    ptx = (built / f"{sf.PROBES[name].slug}.ptx").read_text()
    assert {op: ptx.count(op) for op in PTX[name]} == PTX[name]


def test_static_smem_is_the_real_kernels(built):
    smem = {n: _manifest(built, p.slug)["smem_static"] for n, p in sf.PROBES.items()}
    assert smem["empty"] == smem["meta"] == smem["empty+cluster"] == 0
    shipped = _manifest(built, "real-shipped-split8")["smem_static"]
    assert smem["window"] == smem["window+global"] == shipped - 32  # less its sweep's 8 ballot masks
    assert smem["window+cluster"] == 43024  # 7 partials of 6 KiB, and the flag words


def _kernel(rule: str, resident: int = 2, max_clusters: int = 0, launch=None):
    grid = GridRule.parse(rule)
    return SimpleNamespace(grid=grid, sm_count=132, resident=resident, max_clusters=max_clusters,
                           cluster=grid.cluster, launch=launch)


def test_t1_is_one_row_group_and_the_wave_is_two_ctas_an_sm():
    assert sf.t1_grid(_kernel("wave:8,split:8")) == 8  # launch_rows(1): one group, not the wave
    assert sf.t1_grid(_kernel("wave:8,cluster:8", max_clusters=16)) == 8
    assert sf.wave_grid(_kernel("wave:8,split:8", resident=8)) == 264  # the shipped kernel's 2 an SM
    assert sf.wave_grid(_kernel("wave:8,cluster:8", resident=8, max_clusters=16)) == 128  # the driver's cap
    assert sf.wave_grid(_kernel("wave:8,cluster:8", resident=8, max_clusters=64)) == 264


def _fake_manifests() -> dict[str, dict]:
    names = {p.slug: n for n, p in sf.PROBES.items()} | {sf.real_slug(n): n for n in sf.REAL}
    return {s: {"probe": names[s], "grid": "wave:8,cluster:8" if "cluster" in s else "wave:8,split:8",
                "registers": 40, "smem_static": 0} for s in sf.slugs()}


def test_rows_launch_their_grids_through_the_fake_timer_and_tabulate():
    launched = []

    def load(m):
        return _kernel(m["grid"], max_clusters=16,
                       launch=lambda ctas, p, name=m["probe"]: launched.append((name, ctas, p)))

    rows = sf.plan_rows(_fake_manifests(), load)
    assert [(r.probe, r.ctas) for r in rows][:3] == [("empty", 8), ("empty", 264), ("meta", 8)]
    assert ("empty+cluster", 128) in [(r.probe, r.ctas) for r in rows]
    assert len(rows) == len(sf.PROBES) + len(sf.WAVE) + len(sf.REAL)

    def timer(calls, packed, reps):  # one launch each; row i takes 3 + i us, then 4 + i us
        for call in calls:
            call(packed[0])
        return [[3.0 + i] * (reps // 2) + [4.0 + i] * (reps // 2) for i in range(len(calls))]

    results = sf.time_rows(rows, ["params0", "params1"], 64, timer)
    assert launched == [(r.probe, r.ctas, "params0") for r in rows]
    assert (results[0]["probe"], results[0]["ctas"], results[0]["reps"]) == ("empty", 8, 64)
    assert [r["median_us"] for r in results] == [3.5 + i for i in range(len(rows))]
    assert (results[2]["p10_us"], results[2]["p90_us"], results[2]["min_us"]) == (5.0, 6.0, 5.0)
    lines = sf.table(results).splitlines()
    assert len(lines) == len(rows) + 1 and lines[0].split()[:3] == ["probe", "CTAs", "clu"]
    assert lines[3].split()[:7] == ["meta", "8", "1", "5.50", "5.00", "6.00", "+2.00"]
    assert json.loads(json.dumps(results)) == results


def test_measure_packs_the_tuners_t1_inputs_in_the_probes_abi(monkeypatch):
    from compressc.runtime import c128a_split
    from compressc.tune import measure

    monkeypatch.setattr(measure, "DEVICE", "cpu")
    monkeypatch.setattr(measure, "FLUSH_BYTES", 4 << 20)
    monkeypatch.setattr(c128a_split, "_WORKSPACE", {})
    packed = sf.packed_inputs()
    names = [p.name for p in abi(sf.SPEC)]
    values = [dict(zip(names, (c.value for c in p.values), strict=True)) for p in packed]
    assert len(packed) >= 2 and len({v["block_table"] for v in values}) == len(values)  # the L2 rotation
    assert {v["num_rows"] for v in values} == {1} and {v["state_block_shift"] for v in values} == {3}
    assert len({v["split_workspace"] for v in values}) == 1  # the runtime's one zeroed workspace
