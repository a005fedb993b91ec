"""Every spec-legal (head_size, quant_block) gets a legal derived schedule (docs/kernels.md §1).

The derived thread map picks the most channels per lane that lay the head out in whole
warps; a quant block wider than a warp (the fp8 indexer's one block per head, head > 128
or so) reduces its warps' maxima through shared memory. A head that no lane layout fits is
one error that names the flag and the rule, not an IR field.
"""

from __future__ import annotations

import pytest

from compressc.driver.compile import compile_source
from compressc.driver.cubin import check_cubin
from compressc.driver.plan import plan
from compressc.ir.from_spec import module_from_spec
from compressc.passes import PassManager, parse_pipeline, resolve_pipeline
from compressc.passes.manager import PipelineError
from compressc.specs import make_spec
from compressc.specs.abi import abi
from compressc.specs.errors import SpecError
from compressc.specs.family import KERNELS

QUANT_BLOCKS = (None, 8, 16, 32, 64, 128)


def _legal_specs():
    for kernel in KERNELS:
        for head in range(72, 1025, 8):
            for block in QUANT_BLOCKS:
                try:
                    yield make_spec(kernel, head, block)
                except SpecError:
                    continue


def _derive(spec):
    module = module_from_spec(spec)
    return PassManager(parse_pipeline(resolve_pipeline("derived", module))).run(module)


def test_every_spec_legal_pair_whose_head_fills_whole_warps_is_scheduled() -> None:
    scheduled = refused = 0
    for spec in _legal_specs():
        unit = 64 if spec.normalises else 32  # a rope lane rotates pairs: 2 channels at least
        if spec.head % unit == 0:
            module = _derive(spec)
            assert int(module.get("threads")) % 32 == 0 and int(module.get("threads")) <= 1024
            scheduled += 1
            continue
        with pytest.raises(PipelineError) as err:
            _derive(spec)
        message = str(err.value)
        assert f"--head-size {spec.head} cannot be scheduled" in message
        assert f"head_size must be a multiple of {unit}" in message
        assert "threads=" not in message and "elems_per_lane" not in message
        refused += 1
    assert scheduled > 250 and refused > 100


@pytest.mark.parametrize(
    "kernel,head,elems,threads",
    [
        ("c4a", 192, 2, 96),
        ("c4a", 320, 2, 160),
        ("c4a", 384, 4, 96),
        ("c4a", 448, 2, 224),
        ("c4a", 640, 4, 160),
        ("c4a", 512, 8, 64),  # the shipped layout is unchanged
        ("c128a_compress", 384, 4, 384),
        ("c128a_compress", 576, 2, 576),  # 4 copies of 288 lanes would pass 1024 threads: 2
        ("indexer_fp8", 128, 4, 32),
        ("indexer_fp8", 192, 2, 96),
    ],
)
def test_derived_layouts(kernel: str, head: int, elems: int, threads: int) -> None:
    module = _derive(make_spec(kernel, head))
    assert (module.get("elems_per_lane"), module.get("threads")) == (elems, threads)


def test_a_quant_block_over_several_warps_exchanges_through_smem() -> None:
    module = _derive(make_spec("indexer_fp8", 384))
    quant = module.find("cc.quant")
    assert quant.get("lanes_per_group") == 96
    assert quant.get("cross_warp") == "smem" and quant.get("group_tree") == (16, 8, 4, 2, 1)
    assert quant.get("smem_offset") is not None
    one_warp = _derive(make_spec("indexer_fp8", 128)).find("cc.quant")
    assert one_warp.get("cross_warp") == "none" and one_warp.get("smem_offset") is None


def test_the_indexer_quant_block_is_the_head() -> None:
    assert make_spec("indexer_fp8", 256).quant_block == 256
    rule = r"quant_block=64: must equal head_size=128: .*one fp32 scale per token"
    with pytest.raises(SpecError, match=rule):
        make_spec("indexer_fp8", 128, 64)


@pytest.mark.parametrize("kernel,head", [("c4a", 384), ("indexer_fp8", 192)])
def test_new_head_sizes_compile_to_a_checked_cubin(kernel: str, head: int) -> None:
    spec = make_spec(kernel, head)
    p = plan(spec, "sm_90a", "default")
    artifacts = compile_source(p.source, "sm_90a")
    info = check_cubin(artifacts.cubin, artifacts.entry, list(abi(spec)), artifacts.block, arch="sm_90a")
    assert artifacts.block == (3 * 32, 1, 1) and info.reqntid == (96, 1, 1)
    if kernel == "indexer_fp8":
        assert "sBuf[g0 + w]" in p.source  # the cross-warp amax


def test_the_runtime_refuses_an_unschedulable_head_before_any_lookup() -> None:
    from compressc.runtime import ops

    with pytest.raises(SpecError) as err:
        ops.kernel_spec("c4a", 96, 32, "bf16")
    assert str(err.value) == (
        "invalid head_size=96: its lanes must fill whole warps of 32 with an even number (2, 4 or 8) "
        "of channels each, so head_size must be a multiple of 64"
    )
    assert ops.kernel_spec("c4a", 384, 64, "bf16").head == 384
