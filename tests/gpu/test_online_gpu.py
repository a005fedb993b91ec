"""The online C128A path on the GPU (docs/kernels.md §9) against the torch reference.

Kernels come from COMPRESSC_CACHE_DIR (c128a_online_h512_q64_r64_f32 and c128a_store, built on a
CPU host). Outputs are poisoned with a sentinel first: the merge may write only its emit rows of
compressed_kv and its write rows of run_state; the step (emit, update, reset, store) only the
emit rows' cache slots, with the bytes rule of docs/kernels.md §6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressc import reference
from compressc.acceptance import compare_cache_bytes
from compressc.online import plan_online_c128_segments
from compressc.online_scenarios import B, make_online_step
from compressc.runtime import ops

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HEAD = 512
ROWS = (1, 37, 300, 1500, 4096)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().view(torch.int32).numpy()


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T", ROWS)
@pytest.mark.parametrize("table", ["emit", "update"])
def test_merge_writes_only_its_rows_and_matches_the_reference(cuda_device, T: int, table: str) -> None:
    step = make_online_step(T, 100 + T, device=cuda_device, stride_pad=4, state_pad=16)
    cpu = make_online_step(T, 100 + T, stride_pad=4, state_pad=16)
    segments = step.tables()[table == "update"]
    got_kv, got_state = step.poisoned(torch.empty(step.T, HEAD, device=cuda_device)), step.run_state.clone()
    ops.online_c128_merge(step.kv, step.score, step.ape, step.positions, got_state, segments, got_kv)
    torch.cuda.synchronize()
    want_kv, want_state = cpu.poisoned(torch.empty(cpu.T, HEAD)), cpu.run_state.clone()
    merge_in = (cpu.kv, cpu.score, cpu.ape, cpu.positions, want_state)
    reference.online_c128_merge(*merge_in, segments.cpu(), want_kv)
    emitted = [s[3] for s in segments.tolist() if s[3] >= 0]
    written = [s[4] for s in segments.tolist() if s[4] >= 0]
    others = [t for t in range(step.T) if t not in emitted]
    assert np.array_equal(_bits(got_kv[others]), _bits(want_kv[others]))  # still the sentinel
    _close(got_kv[emitted], want_kv[emitted])
    kept = [r for r in range(cpu.run_state.shape[0]) if r not in written]
    assert np.array_equal(_bits(got_state[kept]), _bits(cpu.run_state[kept]))
    _close(got_state[written], want_state[written])


@pytest.mark.parametrize("weight_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("T", ROWS)
def test_step_writes_the_reference_cache_bytes(cuda_device, T: int, weight_dtype: str) -> None:
    seed = 7 * T + (weight_dtype == "f32")
    step = make_online_step(T, seed, device=cuda_device, weight_dtype=weight_dtype)
    cpu = make_online_step(T, seed, weight_dtype=weight_dtype)
    got_cache, got_state = step.poisoned(step.k_cache), step.run_state.clone()
    ops.compress_c128a_online(*step.step_args(got_state, got_cache))
    torch.cuda.synchronize()
    want_cache, want_state = cpu.poisoned(cpu.k_cache), cpu.run_state.clone()
    cpu.run_reference(want_state, want_cache, torch.zeros(cpu.T, HEAD))
    report = compare_cache_bytes(cpu.store_spec, got_cache.cpu(), want_cache, cpu.active_slots(),
                                 kv_cache_block_size=B)
    assert report.ok, str(report)
    assert report.code_steps <= max(1, 1e-4 * report.codes), str(report)
    reset = list(cpu.plan.reset)
    assert torch.equal(got_state[reset, :HEAD].cpu(), torch.full((len(reset), HEAD), -torch.inf))
    assert torch.equal(got_state[reset, HEAD:].cpu(), torch.zeros(len(reset), 2 * HEAD))
    _close(got_state, want_state)


def test_a_sequence_in_decode_steps_matches_one_prefill(cuda_device) -> None:
    """Positions 0..255 as a 100-row chunk then 156 single-token steps: the state carried through
    run_state gives the same pooled rows (to fp32 rounding) as one 256-row chunk."""
    step = make_online_step(256, 3, device=cuda_device)
    kv, score, ape = step.kv[:256].contiguous(), step.score[:256].contiguous(), step.ape
    positions = torch.arange(256, device=cuda_device)
    state = torch.zeros(2, 3 * HEAD, device=cuda_device)
    whole = torch.empty(256, HEAD, device=cuda_device)
    emit, update, _ = plan_online_c128_segments([0, 256], [256], [0]).tensors(cuda_device)
    ops.online_c128_merge(kv, score, ape, positions, state, emit, whole)
    steps = torch.empty(256, HEAD, device=cuda_device)
    chunks = [(0, 100)] + [(t, t + 1) for t in range(100, 256)]
    for qs, qe in chunks:
        plan = plan_online_c128_segments([0, qe - qs], [qe], [1])
        emit, update, _ = plan.tensors(cuda_device)
        rows = slice(qs, qe)
        out = steps[rows]
        ops.online_c128_merge(kv[rows], score[rows], ape, positions[rows], state, emit, out)
        ops.online_c128_merge(kv[rows], score[rows], ape, positions[rows], state, update, out)
    torch.cuda.synchronize()
    _close(steps[[127, 255]], whole[[127, 255]])
