"""The NumPy interpreter of lowered modules against the torch reference (docs/kernels.md §6 acceptance).

- the thread map is a bijection onto the head for every legal schedule of every default variant;
- the lowered IR of every default variant reproduces the reference bytes on random launches;
- every legal schedule the pass options can produce computes the same function (property test).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressc import reference
from compressc.acceptance import allowed_steps, compare_cache_bytes
from compressc.ir import interp
from compressc.ir.from_spec import module_from_spec
from compressc.ir.interp import args_from_scenario, lane_channels, run_module
from compressc.ir.verifier import VerifyError, verify
from compressc.kernels.emitter import emit
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline
from compressc.passes.manager import DEFAULT_FETCH
from compressc.scenarios import KINDS, SENTINEL, make_scenario
from compressc.specs import default_specs, make_spec

AFTER_ROWS = DEFAULT_FETCH.removeprefix("rows-in-flight,")  # the window passes after it

# the paged family; the online merge (segments, no paged state) has tests/test_online.py, the fused
# CSA kernel (two parts, docs/kernels.md §12) tests/test_csa.py
DEFAULTS = [s for s in default_specs() if not s.segmented and s.kernel != "csa"]
POOL_ONLY = "c128a_compress"


def _lower(spec, pipeline: str = "default"):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline(pipeline, module))).run(module)


def _pipeline(elems: int, split: int, bits: int = 128, order: str = "down", rows: int = 0,
              rescale: str = "batch") -> str:
    window = AFTER_ROWS.replace("rescale,", f"rescale{{per={rescale}}},")
    return (
        f"thread-map{{elems-per-lane={elems},window-split={split}}},vectorize{{bits={bits}}},"
        f"lower-reduction{{order={order}}},plan-smem,rows-in-flight{{rows={rows}}},{window}"
    )


@functools.cache
def legal_maps(spec) -> tuple[tuple[int, int], ...]:
    """Every (elems_per_lane, window_split) the verifier accepts after the whole pipeline."""
    legal = []
    for elems, split in itertools.product([1 << k for k in range(11)], range(1, 17)):
        try:
            _lower(spec, _pipeline(elems, split))
        except VerifyError:
            continue
        legal.append((elems, split))
    return tuple(legal)


def _seed(*parts: object) -> int:
    return sum((i + 1) * sum(map(ord, str(p))) for i, p in enumerate(parts))


def _rows(spec, kind: str) -> int:
    """Small launches that still hold several active rows (C128 needs 128 tokens per row)."""
    if kind == "decode":
        return 4
    return 12 if spec.ratio == 4 else 300


# -- comparing with the reference -------------------------------------------------------------
def _active_slots(sc) -> torch.Tensor:
    n = min(sc.T, sc.kv_slot_mapping.numel())
    return sc.kv_slot_mapping[:n][sc.active()[:n]]


def _assert_cache_accepted(spec, got: torch.Tensor, want: torch.Tensor, sc) -> None:
    """The GPU tests' acceptance (docs/kernels.md §6): rare one-step fp8 codes only."""
    report = compare_cache_bytes(
        spec, got, want, _active_slots(sc), kv_cache_block_size=sc.kv_cache_block_size
    )
    assert report.ok, str(report)
    assert report.code_steps <= allowed_steps(spec, report), str(report)
    assert report.tokens == int(sc.active().sum())


def _assert_pooled_close(got: torch.Tensor, want: torch.Tensor, sc) -> None:
    """Pooled fp32 rows: inactive rows keep the sentinel bytes; active rows agree to fp32 rounding.

    The interpreter merges split groups and uses fp32 ex2 where the reference runs one exact-exp
    online softmax over the window, so the pooled values may differ in the last bits only.
    """
    active = sc.active()
    assert torch.equal(got[~active].view(torch.uint8), want[~active].view(torch.uint8))
    assert bool(active.any())
    torch.testing.assert_close(got[active], want[active], rtol=2e-5, atol=1e-6)


def _interpret(module, sc, spec) -> torch.Tensor:
    out = sc.poisoned_compressed_kv() if spec.kernel == POOL_ONLY else sc.poisoned_cache()
    run_module(module, args_from_scenario(sc, out))
    return out


def _check_variant(spec, module, kind: str, T: int, seed: int, **extra) -> torch.Tensor:
    sc = make_scenario(spec, kind, T, seed=seed, **extra)
    got = _interpret(module, sc, spec)
    want = sc.run_reference()
    if spec.kernel == POOL_ONLY:
        _assert_pooled_close(got, want, sc)
    else:
        _assert_cache_accepted(spec, got, want, sc)
    return got


# -- the thread map ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", DEFAULTS, ids=lambda s: s.variant)
def test_thread_map_is_a_bijection_for_every_legal_schedule(spec) -> None:
    legal = legal_maps(spec)
    default = _lower(spec)
    assert (default.get("elems_per_lane"), default.get("window_split")) in legal
    assert len(legal) >= 4  # the options reach other legal schedules, not only the default
    for elems, split in legal:
        module = _lower(spec, _pipeline(elems, split))
        owned = lane_channels(module)
        head_lanes = spec.head // elems
        assert owned.shape == (head_lanes * split, elems)
        for group in owned.reshape(split, head_lanes * elems):
            # each split group's lanes own every channel exactly once, in lane order
            assert np.array_equal(group, np.arange(spec.head)), (elems, split)
        _check_quant_groups(module, owned[:head_lanes], elems)


def _check_quant_groups(module, owned: np.ndarray, elems: int) -> None:
    """The lanes of one quant group own exactly one quant block, and no lane straddles nope/rope."""
    quant = module.find("cc.quant")
    if quant is None:
        return
    block, lanes = int(quant.attr("block")), int(quant.get("lanes_per_group"))
    blocks = owned.reshape(-1, lanes * elems)
    assert np.array_equal(
        blocks // block, np.repeat(np.arange(len(blocks)), lanes * elems).reshape(blocks.shape)
    )
    nope = int(module.attr("head")) - int(module.attr("rope"))
    assert np.all((owned < nope).all(axis=1) | (owned >= nope).all(axis=1))


def test_lane_channels_follow_the_emitted_prologue() -> None:
    for spec, pipeline in ((make_spec("c4a"), "default"), (make_spec("c128a_compress"), "default")):
        module = _lower(spec, pipeline)
        source = emit(module, pipeline)
        elems, head_lanes = module.get("elems_per_lane"), module.get("head_lanes")
        assert f"col = hlane * {elems}  # first channel this lane owns" in source
        owned = lane_channels(module)
        if module.get("window_split") > 1:
            assert f"hlane = tidx % {head_lanes}" in source
            assert owned[head_lanes + 3, 0] == 3 * elems  # thread head_lanes + 3 is lane 3 of group 1
        else:
            assert "hlane = tidx\n" in source
        assert list(owned[1]) == list(range(elems, 2 * elems))


# -- the default lowering against the reference ------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", DEFAULTS, ids=lambda s: s.variant)
def test_default_lowering_matches_the_reference(spec, kind: str) -> None:
    T = _rows(spec, kind)
    _check_variant(spec, _lower(spec), kind, T, _seed(spec.variant, kind, T))


FUSED = [s for s in DEFAULTS if s.kernel in ("c4a", "indexer_fp8")]
EDGES = [{"tiny_block": True}, {"short_positions": True}, {"nonboundary_kv": "none"}]


@pytest.mark.parametrize("extra", EDGES, ids=["tiny_block", "short_positions", "nonboundary_none"])
@pytest.mark.parametrize(
    "spec", FUSED + [s for s in DEFAULTS if s.kernel == "c128a_store"], ids=lambda s: s.variant
)
def test_default_lowering_edge_cases(spec, extra: dict) -> None:
    _check_variant(spec, _lower(spec), "mixed", _rows(spec, "mixed"), _seed(spec.variant, extra), **extra)


def _c128a_chain(store_spec, pool_module, store_module, kind: str, T: int, seed: int) -> None:
    """Interpret compress then store, as the runtime launches them, against the reference pair."""
    pool_spec = make_spec(POOL_ONLY, store_spec.head, store_spec.quant_block, weight_dtype="f32")
    sc = make_scenario(store_spec, kind, T, seed=seed)
    pooled = make_scenario(pool_spec, kind, T, seed=seed, weight_dtype=store_spec.weight_dtype)
    assert torch.equal(pooled.kv_slot_mapping, sc.kv_slot_mapping)
    got_kv = _interpret(pool_module, pooled, pool_spec)
    got = _interpret(store_module, replace(sc, compressed_kv=got_kv), store_spec)

    want_kv = pooled.run_reference()
    want = sc.poisoned_cache()
    rows = (sc.token_to_req_indices, sc.positions, sc.slot_mapping)
    reference.c128a_store(
        store_spec,
        want_kv,
        *rows,
        sc.rms_norm_weight,
        sc.rms_norm_eps,
        sc.cos_sin_cache,
        want,
        sc.kv_slot_mapping,
        sc.kv_cache_block_size,
    )
    _assert_cache_accepted(store_spec, got, want, sc)


@pytest.mark.parametrize("kind", ["prefill", "mixed"])
@pytest.mark.parametrize("weight", ["bf16", "f32"])
def test_c128a_compress_then_store_matches_the_reference(weight: str, kind: str) -> None:
    store_spec = make_spec("c128a_store", weight_dtype=weight)
    pool_module = _lower(make_spec(POOL_ONLY, weight_dtype="f32"))
    _c128a_chain(store_spec, pool_module, _lower(store_spec), kind, 400, _seed(weight, kind))


def test_inactive_launch_writes_nothing() -> None:
    spec = make_spec("c4a")
    sc = make_scenario(spec, "mixed", 12, seed=5)
    sc = replace(sc, slot_mapping=torch.full_like(sc.slot_mapping, -1))
    got = _interpret(_lower(spec), sc, spec)
    assert bool((got == SENTINEL).all())


def _report(spec, module, kind: str, T: int, seed: int, **extra):
    sc = make_scenario(spec, kind, T, seed=seed, **extra)
    got, want = _interpret(module, sc, spec), sc.run_reference()
    return compare_cache_bytes(spec, got, want, _active_slots(sc), kv_cache_block_size=sc.kv_cache_block_size)


def test_the_comparison_catches_a_wrong_module(monkeypatch) -> None:
    spec = make_spec("c4a")
    assert _report(spec, _lower(spec), "mixed", 12, 11, tiny_block=True).ok
    # Flooring amax instead of the scale (vLLM's Triton fallback) changes the tiny block's scale byte.
    wrong = _lower(spec).replace_ops(
        "kd.ue8m0_scale", lambda op: replace(op, attrs=_set(op.attrs, "floor_on", "amax"))
    )
    # The verifier refuses such a module (its kd op is not the lowering of its cc.quant); the
    # byte comparison must catch the wrong bytes on its own, so the interpreter runs it unverified.
    with pytest.raises(VerifyError, match="kd.ue8m0_scale: floor_on='amax': must be 'scale'"):
        verify(wrong)
    monkeypatch.setattr(interp, "verify", lambda module: module)
    report = _report(spec, wrong, "mixed", 12, 11, tiny_block=True)
    assert report.scale_mismatches > 0 and not report.ok
    # Rotating at p instead of (p // 4) * 4 changes the rope values.
    shifted = _lower(spec).replace_ops("kd.load_rope_tables",
                                       lambda op: replace(op, attrs=_set(op.attrs, "ratio", 1)))
    report = _report(spec, shifted, "decode", 4, 11)
    assert report.rope_failures > 0 and report.scale_mismatches == 0


def _set(items, key, value):
    return tuple((k, value if k == key else v) for k, v in items)


# -- every legal schedule computes the same function -----------------------------------------------------
SCHEDULE_SPECS = DEFAULTS


@st.composite
def schedules(draw):
    spec = draw(st.sampled_from(SCHEDULE_SPECS))
    elems, split = draw(
        st.sampled_from([m for m in legal_maps(spec) if m[0] in (2, 4, 8) and m[1] in (1, 2, 4)])
    )
    bits = draw(st.sampled_from([32, 64, 128]))
    order = draw(st.sampled_from(["down", "up"]))
    rows = draw(st.sampled_from([0, 1, 2]))
    kind = draw(st.sampled_from(KINDS))
    return spec, _pipeline(elems, split, bits, order, rows), kind, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_every_legal_schedule_matches_the_reference(case) -> None:
    spec, pipeline, kind, seed = case
    _check_variant(spec, _lower(spec, pipeline), kind, _rows(spec, kind), seed)


@pytest.mark.parametrize("spec", SCHEDULE_SPECS, ids=lambda s: s.variant)
def test_vector_width_and_prefetch_keep_every_byte(spec) -> None:
    """Options that change no arithmetic order give identical bytes: the vector width, and
    the rows in flight when the softmax rescales row by row (with rescale=batch the batch
    is the rescale's unit, so rows in flight do change the order)."""
    sc = make_scenario(spec, "mixed", _rows(spec, "mixed"), seed=_seed(spec.variant))
    elems, split = (_lower(spec).get(k) for k in ("elems_per_lane", "window_split"))
    by_row = _pipeline(elems, split, rescale="row")
    row_by_row = _interpret(_lower(spec, by_row), sc, spec)
    for bits, rows in ((32, 1), (64, 2)):
        pipeline = _pipeline(elems, split, bits, "down", rows, rescale="row")
        got = _interpret(_lower(spec, pipeline), sc, spec)
        assert torch.equal(got.view(torch.uint8), row_by_row.view(torch.uint8)), (bits, rows)
    base = _interpret(_lower(spec), sc, spec)
    for bits in (32, 64):
        got = _interpret(_lower(spec, _pipeline(elems, split, bits)), sc, spec)
        assert torch.equal(got.view(torch.uint8), base.view(torch.uint8)), bits


def test_batch_rescale_matches_the_reference_and_changes_only_rounding() -> None:
    """One rescale per batch is the same softmax with other rounding: within the reference's
    bounds (checked for every schedule above), and not bit-identical to row by row."""
    spec = make_spec(POOL_ONLY)
    sc = make_scenario(spec, "mixed", 300, seed=_seed("rescale"))
    batch = _interpret(_lower(spec, _pipeline(4, 2)), sc, spec)
    row = _interpret(_lower(spec, _pipeline(4, 2, rescale="row")), sc, spec)
    _assert_pooled_close(batch, sc.run_reference(), sc)
    assert not torch.equal(batch.view(torch.int32), row.view(torch.int32))
    assert _lower(spec, _pipeline(4, 2)).find("cc.window").get("rescale") == "batch"


def test_every_split_of_the_c128_window_matches_the_reference() -> None:
    spec = make_spec(POOL_ONLY)
    splits = sorted({s for _, s in legal_maps(spec)})
    assert splits == [1, 2, 4, 8]
    for split in splits:
        _check_variant(spec, _lower(spec, _pipeline(8, split)), "mixed", 300, _seed("split", split))


@pytest.mark.parametrize("cluster,split", [(2, 2), (4, 1), (8, 2)])
def test_cluster_split_of_the_c128_window_matches_the_reference(cluster, split) -> None:
    spec = make_spec(POOL_ONLY)
    pipeline = _pipeline(4, split).replace("}", f",cluster-split={cluster}}}", 1)
    module = _lower(spec, pipeline)
    assert module.get("cluster_split") == cluster and module.get("grid") == "tiled"
    _check_variant(spec, module, "mixed", 300, _seed("cluster", cluster))


def test_cluster_merge_is_the_rank_order_fold_of_the_ctas_results() -> None:
    """Splitting over a cluster changes the merge tree, not what is merged: a cluster of 2 with
    one group each folds the same two halves in the same order as one CTA with two groups."""
    spec = make_spec(POOL_ONLY)
    sc = make_scenario(spec, "mixed", 300, seed=_seed("fold"))
    one_cta = _interpret(_lower(spec, _pipeline(4, 2)), sc, spec)
    cluster = _interpret(_lower(spec, _pipeline(4, 1).replace("}", ",cluster-split=2}", 1)), sc, spec)
    assert torch.equal(one_cta.view(torch.int32), cluster.view(torch.int32))
    four = _interpret(_lower(spec, _pipeline(4, 2).replace("}", ",cluster-split=2}", 1)), sc, spec)
    flat = _interpret(_lower(spec, _pipeline(4, 4)), sc, spec)
    # ((g0 g1) (g2 g3)) against (((g0 g1) g2) g3): another rounding, both within the reference's bounds
    assert not torch.equal(four.view(torch.int32), flat.view(torch.int32))
    _assert_pooled_close(four, sc.run_reference(), sc)


def test_c128a_chain_with_non_default_schedules() -> None:
    store_spec = make_spec("c128a_store")
    pool_module = _lower(make_spec(POOL_ONLY, weight_dtype="f32"), _pipeline(4, 2, 64, "up", 4))
    store_module = _lower(store_spec, _pipeline(2, 1, 32, "up", 0))
    _c128a_chain(store_spec, pool_module, store_module, "decode", 6, 7)


# -- interpreter errors -------------------------------------------------------------------------------------
def test_interpreter_needs_a_lowered_module() -> None:
    spec = make_spec("c4a")
    sc = make_scenario(spec, "decode", 2, seed=0)
    with pytest.raises(VerifyError, match=r"elems_per_lane is unset: the interpreter needs a lowered module"):
        run_module(module_from_spec(spec), args_from_scenario(sc, sc.poisoned_cache()))


def test_interpreter_checks_its_arguments() -> None:
    spec = make_spec("c4a")
    module = _lower(spec)
    sc = make_scenario(spec, "decode", 2, seed=0)
    args = args_from_scenario(sc, sc.poisoned_cache())
    with pytest.raises(
        ValueError, match=r"argument 'block_table' is missing \(the c4a_h512_q64_r64_bf16 ABI"
    ):
        run_module(module, {k: v for k, v in args.items() if k != "block_table"})
    with pytest.raises(
        ValueError, match=r"argument 'positions' must be a C-contiguous int64 array, got int32"
    ):
        run_module(module, args | {"positions": args["positions"].astype(np.int32)})


# -- head sizes beyond the shipped ones (derived schedules) ------------------------------------------
NEW_HEADS = [("c4a", h) for h in (192, 320, 384, 448, 640)] + [("indexer_fp8", h) for h in (192, 384, 512)]


@pytest.mark.parametrize("kernel,head", NEW_HEADS, ids=lambda v: str(v))
def test_derived_schedules_of_other_head_sizes_match_the_reference(kernel: str, head: int) -> None:
    spec = make_spec(kernel, head)
    _check_variant(spec, _lower(spec, "derived"), "mixed", 12, _seed(kernel, head))


@pytest.mark.parametrize("head", [384, 576])
def test_c128a_chain_of_other_head_sizes(head: int) -> None:
    store_spec = make_spec("c128a_store", head)
    pool_module = _lower(make_spec(POOL_ONLY, head, weight_dtype="f32"), "derived")
    _c128a_chain(store_spec, pool_module, _lower(store_spec, "derived"), "prefill", 260, _seed(head))
