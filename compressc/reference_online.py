"""The online C128 merge in torch (docs/kernels.md §9.3): the running softmax state per
request, merged segment by segment (re-exported by compressc.reference)."""

from __future__ import annotations

import torch

from compressc.reference import exact_exp


def online_c128_merge(
    kv: torch.Tensor,
    score: torch.Tensor,
    ape: torch.Tensor,
    positions: torch.Tensor,
    run_state: torch.Tensor,
    segments: torch.Tensor,
    compressed_kv: torch.Tensor,
) -> None:
    """One launch of `online_c128_merge`: every segment (row_base, num_rows, read_row, emit_token,
    write_row) of `segments`, each reading the running state committed before the launch.

    Per column, fp32: seed (m, l, a) from run_state[read_row] (max | sum | weighted sum) or
    (-inf, 0, 0); for each row t in order, s = score[t] + ape[p mod ratio]; m' = max(m, s);
    alpha = e(m - m'), beta = e(s - m'); l = l * alpha + beta; a = a * alpha + kv[t] * beta;
    m = m'. Then compressed_kv[emit_token] = a / l and run_state[write_row] = (m, l, a) where >= 0.
    """
    head, ratio = kv.shape[1], ape.shape[0]
    committed = run_state.clone()
    for base, rows, read, emit, write in segments.tolist():
        m, den, acc = _online_seed(committed, read, head, kv.device)
        for t in range(base, base + rows):
            s = score[t].float() + ape[int(positions[t]) % ratio].float()
            m_new = torch.maximum(m, s)
            alpha, beta = exact_exp(m - m_new), exact_exp(s - m_new)
            den, acc, m = den * alpha + beta, acc * alpha + kv[t].float() * beta, m_new
        if emit >= 0:
            compressed_kv[emit] = acc / den
        if write >= 0:
            run_state[write, : 3 * head] = torch.cat((m, den, acc))


def _online_seed(state: torch.Tensor, read: int, head: int, device: torch.device) -> tuple:
    if read >= 0:
        row = state[read].float()
        return row[:head].clone(), row[head : 2 * head].clone(), row[2 * head : 3 * head].clone()
    m = torch.full((head,), float("-inf"), dtype=torch.float32, device=device)
    return m, torch.zeros_like(m), torch.zeros_like(m)


def online_state_reset(run_state: torch.Tensor, rows: torch.Tensor, head: int) -> None:
    """docs/kernels.md §9.1's reset value (-inf, 0, 0) into run_state[rows]."""
    rows = rows.to(device=run_state.device, dtype=torch.int64)
    run_state[rows, :head] = float("-inf")
    run_state[rows, head : 3 * head] = 0.0
