"""torch.ops.compressc.*: schemas with their mutations, opcheck, torch.compile(fullgraph) on CPU.

On CPU the ops run the torch reference (the CUDA path runs the kernels: tests/gpu), so
opcheck runs all of its tests for real here: the schema (declared mutations are the only
ones), autograd registration, the fake impl against the real one, and AOT dispatch with
dynamic shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from compressc import reference
from compressc.runtime import torch_ops
from compressc.scenarios import make_scenario
from compressc.specs import make_spec

OPS = torch_ops.register()
ROWS = 12  # opcheck runs the reference several times: keep the launch small


def _fused_case(kernel: str, seed: int = 1):
    spec = make_spec(kernel, weight_dtype="f32" if kernel == "indexer_fp8" else "bf16")
    return spec, make_scenario(spec, "mixed", ROWS, device=torch.device("cpu"), seed=seed)


def _c128a_case(seed: int = 2):
    store = make_spec("c128a_store")
    pool = make_spec("c128a_compress", weight_dtype="f32")
    sc = make_scenario(store, "decode", ROWS, device=torch.device("cpu"), seed=seed)
    state = make_scenario(pool, "decode", ROWS, device=torch.device("cpu"), seed=seed).state_cache
    args = (state, sc.token_to_req_indices, sc.positions, sc.slot_mapping, sc.block_table, sc.block_size,
            sc.rms_norm_weight, sc.rms_norm_eps, sc.cos_sin_cache, sc.poisoned_cache(), sc.kv_slot_mapping,
            sc.kv_cache_block_size)
    return pool, store, sc, args


def test_register_is_idempotent():
    again = torch_ops.register()
    assert again.keys() == OPS.keys() and all(again[k] is OPS[k] for k in OPS)


def test_schemas_declare_the_writes():
    c4a = str(torch.ops.compressc.compress_c4a.default._schema)
    assert "Tensor(a9!) k_cache" in c4a and c4a.endswith("-> ()")
    c128a = str(torch.ops.compressc.compress_c128a.default._schema)
    assert "Tensor(a9!) k_cache" in c128a and "Tensor(a14!)? compressed_kv=None" in c128a
    indexer = str(torch.ops.compressc.compress_indexer_fp8.default._schema)
    assert "Tensor(a9!) k_cache" in indexer and indexer.count("!") == 1


@pytest.mark.parametrize("kernel", ["c4a", "indexer_fp8"])
def test_fused_ops_write_the_reference_bytes_and_pass_opcheck(kernel):
    spec, sc = _fused_case(kernel)
    op = getattr(torch.ops.compressc, f"compress_{kernel}")
    got = sc.poisoned_cache()
    op(*sc.args(got), head_size=spec.head, quant_block=spec.quant_block)
    assert torch.equal(got, sc.run_reference()) and not torch.equal(got, sc.poisoned_cache())
    result = torch.library.opcheck(op.default, sc.args(sc.poisoned_cache()))
    assert set(result.values()) == {"SUCCESS"} and len(result) == 4


def test_c128a_op_with_and_without_compressed_kv():
    pool, store, sc, args = _c128a_case()
    pooled = sc.poisoned_compressed_kv()
    reference.c128a_compress(pool, args[0], *args[1:5], args[5], pooled, sc.kv_slot_mapping)
    want = sc.poisoned_cache()
    reference.c128a_store(store, pooled, *args[1:4], *args[6:9], want, sc.kv_slot_mapping,
                          sc.kv_cache_block_size)
    torch.ops.compressc.compress_c128a(*args)
    assert torch.equal(args[9], want)
    given = sc.poisoned_compressed_kv()
    fresh = args[:9] + (sc.poisoned_cache(),) + args[10:]
    op = torch.ops.compressc.compress_c128a.default
    result = torch.library.opcheck(op, fresh, {"compressed_kv": given})
    assert set(result.values()) == {"SUCCESS"}


def test_cpu_path_checks_arguments_like_the_cuda_path():
    spec, sc = _fused_case("c4a")
    args = list(sc.args(sc.poisoned_cache()))
    args[0] = args[0].double()
    with pytest.raises(TypeError, match="state_cache must have dtype torch.float32, got torch.float64"):
        torch.ops.compressc.compress_c4a(*args)


def test_fake_tensors_run_the_fake_impl():
    spec, sc = _fused_case("c4a")
    real = sc.args(sc.poisoned_cache())
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in real]
        assert torch.ops.compressc.compress_c4a(*fake) is None
        assert fake[9].shape == sc.k_cache.shape


def test_compile_fullgraph_keeps_the_op_in_the_graph():
    spec, sc = _fused_case("c4a", seed=3)
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(cache: torch.Tensor, *args) -> torch.Tensor:
        torch.ops.compressc.compress_c4a(*args[:9], cache, *args[9:])
        return cache.float().sum()  # a reader of the written cache, ordered after the write

    args = list(sc.args())
    rest = args[:9] + args[10:]
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    got = sc.poisoned_cache()
    total = compiled(got, *rest)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert len(graphs) == 1 and "compressc.compress_c4a" in targets
    want = sc.run_reference()
    assert torch.equal(got, want) and total == want.float().sum()


def test_compile_aot_eager_functionalizes_the_write():
    spec, sc = _fused_case("indexer_fp8", seed=4)

    def step(cache: torch.Tensor, *args) -> None:
        torch.ops.compressc.compress_indexer_fp8(*args[:9], cache, *args[9:])

    args = list(sc.args())
    got = sc.poisoned_cache()
    torch.compile(step, fullgraph=True, backend="aot_eager")(got, *(args[:9] + args[10:]))
    assert torch.equal(got, sc.run_reference())


def test_c128a_version_bump_reads_a_dropped_compressed_kv_as_none(monkeypatch):
    """torch <= 2.11's custom_op indexed args[14] here: the dispatcher drops trailing arguments
    equal to their defaults (compressed_kv=None), so the call raised IndexError on any device."""
    seen = []
    real = torch_ops._bump_versions
    monkeypatch.setattr(torch_ops, "_bump_versions",
                        lambda op, written, keyset, args, kwargs: seen.append(len(args)) or real(
                            op, written, keyset, args, kwargs))
    pool, store, sc, args = _c128a_case(seed=5)
    before = args[9]._version
    torch.ops.compressc.compress_c128a(*args)
    assert seen == [12] and args[9]._version > before  # k_cache bumped, compressed_kv dropped
    given = sc.poisoned_compressed_kv()
    kv_before = given._version
    torch.ops.compressc.compress_c128a(*args, compressed_kv=given)
    assert seen[-1] == 15 and given._version > kv_before
