"""DeepSeek-V4.1's confirmed rules (docs/kernels.md §11): the latent, the rope position and the
FP4 fake quantisation, against independent computations and the MXFP4 cache's decode."""

from __future__ import annotations

import pytest
import torch

from compressc import reference, reference_v41
from compressc.numerics import bf16_rne, e2m1_decode, scale_from_ue8m0

GEN = torch.Generator().manual_seed(41)


def test_ratio_1_latent_is_the_bf16_rms_norm_of_the_bf16_projection() -> None:
    kv, w = torch.randn(6, 512, generator=GEN), 1 + 0.1 * torch.randn(512, generator=GEN)
    got = reference_v41.latent(1, kv, w, 1e-6)
    x = kv.to(torch.bfloat16).double()
    want = (x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)) * w.double()
    assert torch.equal(got, bf16_rne(got))  # bf16 values
    torch.testing.assert_close(got.double(), want, rtol=2**-7, atol=1e-6)


def test_ratio_2_pools_each_pair_with_a_softmax_over_its_two_scores() -> None:
    kv, w = torch.randn(8, 512, generator=GEN), torch.ones(512)
    equal = reference_v41.latent(2, kv, w, 1e-6, score=torch.zeros(8, 512))
    mean = reference_v41.latent(1, (kv[0::2] + kv[1::2]) / 2, w, 1e-6)
    torch.testing.assert_close(equal, mean, rtol=2**-7, atol=1e-5)
    first = torch.zeros(8, 512)
    first[0::2] = 80.0  # the even partner's weight is ~1
    torch.testing.assert_close(reference_v41.latent(2, kv, w, 1e-6, score=first),
                               reference_v41.latent(1, kv[0::2], w, 1e-6), rtol=2**-7, atol=1e-5)
    with pytest.raises(ValueError, match="ratio 2 needs kv and score"):
        reference_v41.latent(2, kv[:3], w, 1e-6, score=torch.zeros(3, 512))
    with pytest.raises(ValueError, match="ratio 1 or 2"):
        reference_v41.latent(4, kv, w, 1e-6)


def test_the_rope_position_of_a_pair_is_its_even_partners() -> None:
    p = torch.tensor([1, 5, 9])
    assert torch.equal(reference_v41.rope_position(2, p), p - 1)
    assert torch.equal(reference_v41.rope_position(1, p), p)


def test_fake_quant_is_the_mxfp4_cache_decoded() -> None:
    """The same block rule as the MXFP4 indexer cache (docs/kernels.md §8): fake-quantising a
    bf16 row equals encoding it to nibbles and scale bytes and decoding them."""
    v = bf16_rne(torch.randn(16, 512, generator=GEN) * torch.logspace(-3, 2, 512))
    packed, e8 = reference.quant_mxfp4(v)
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(16, 512)
    decoded = e2m1_decode(nibbles) * scale_from_ue8m0(e8).repeat_interleave(32, dim=1)
    assert torch.equal(reference_v41.fp4_fake_quant(v), decoded)


def test_fake_quant_is_idempotent_and_on_the_grid() -> None:
    x = torch.randn(4, 512, generator=GEN) * 3
    q = reference_v41.fp4_fake_quant(x)
    assert torch.equal(reference_v41.fp4_fake_quant(q), q)
    blocks = q.reshape(4, 16, 32)
    scale = 2.0 ** torch.ceil(torch.log2(blocks.abs().amax(-1, keepdim=True) / 6))  # the block's power of two
    on_grid = torch.isin((blocks / scale).abs(), torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6]))
    assert bool(on_grid.all())
