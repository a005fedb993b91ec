"""The online C128 ops (docs/kernels.md §9): one merge launch, and a step's composition (§9.4).

`online_c128_merge` launches the c128a_online kernel over one segment table (one CTA a
segment). `compress_c128a_online` runs a step as vLLM's online path does: the emit segments
(they read only the committed running state), then the update segments (they write it), then
the reset rows, then the unchanged c128a_store kernel over all T rows, which consumes exactly the
emit rows (slot >= 0, boundary position, kv_slot >= 0). Every argument of every launch is checked
before the first one; the segment tables come from `compressc.online.plan_online_c128_segments`.
"""

from __future__ import annotations

import torch

from compressc.runtime.ops import _launch, check_bounds_enabled, kernel_spec
from compressc.runtime.validate import (
    Values,
    _invalid,
    _tensor,
    check_device,
    compressed_values,
    row_values,
    store_values,
    weight_dtype_name,
)
from compressc.runtime.validate_online import _rows_2d, check_segment_bounds, online_values

MERGE = "c128a_online"


def online_c128_merge(kv: torch.Tensor, score: torch.Tensor, ape: torch.Tensor, positions: torch.Tensor,
                      run_state: torch.Tensor, segments: torch.Tensor, compressed_kv: torch.Tensor, *,
                      head_size: int = 512) -> None:
    """docs/kernels.md §9.3 for every segment of `segments` (int32 [n, 5]): compressed_kv[emit_token]
    and run_state[write_row] are written in place, nothing else."""
    spec = kernel_spec(MERGE, head_size, 64, "f32")
    values = online_values(spec, kv, score, ape, positions, run_state, segments, compressed_kv)
    device = check_device(_named(kv=kv, score=score, ape=ape, positions=positions, run_state=run_state,
                                 segments=segments, compressed_kv=compressed_kv))
    if check_bounds_enabled():
        check_segment_bounds(segments, kv.shape[0], run_state.shape[0])
    if values["num_rows"]:
        _launch(spec, device, values)


def compress_c128a_online(
    kv: torch.Tensor,
    score: torch.Tensor,
    ape: torch.Tensor,
    positions: torch.Tensor,
    run_state: torch.Tensor,
    emit_segments: torch.Tensor,
    update_segments: torch.Tensor,
    reset_rows: torch.Tensor,
    token_to_req_indices: torch.Tensor,
    slot_mapping: torch.Tensor,
    rms_norm_weight: torch.Tensor,
    rms_norm_eps: float,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    kv_slot_mapping: torch.Tensor,
    kv_cache_block_size: int,
    *,
    head_size: int = 512,
    quant_block: int = 64,
    compressed_kv: torch.Tensor | None = None,
) -> None:
    """One step of the online C128A path (docs/kernels.md §9.4) into k_cache.

    emit_segments, update_segments: int32 [n, 5] (`OnlinePlan.tensors`); reset_rows: int64 [k]
    run_state rows set to (-inf, 0, 0) after the merges. compressed_kv: fp32 [>= T, head_size]
    for the pooled rows (default: a fresh torch.empty; only the emit rows are written and read).
    """
    merge_spec = kernel_spec(MERGE, head_size, quant_block, "f32")
    store_spec = kernel_spec("c128a_store", head_size, quant_block, weight_dtype_name(rms_norm_weight))
    T = _rows_2d("kv", kv, head_size, 4, f"[T, {head_size}]").shape[0]
    if compressed_kv is None:
        compressed_kv = torch.empty((T, head_size), dtype=torch.float32, device=kv.device)
    merge_in = (kv, score, ape, positions, run_state)
    emit = online_values(merge_spec, *merge_in, emit_segments, compressed_kv, table_name="emit_segments")
    update = online_values(merge_spec, *merge_in, update_segments, compressed_kv,
                           table_name="update_segments")
    resets = _reset_rows(reset_rows)
    store = _store_values(store_spec, T, compressed_kv, token_to_req_indices, positions, slot_mapping,
                          rms_norm_weight, rms_norm_eps, cos_sin_cache, k_cache, kv_slot_mapping,
                          kv_cache_block_size)
    device = check_device(_named(
        kv=kv, score=score, ape=ape, positions=positions, run_state=run_state, emit_segments=emit_segments,
        update_segments=update_segments, reset_rows=resets, token_to_req_indices=token_to_req_indices,
        slot_mapping=slot_mapping, rms_norm_weight=rms_norm_weight, cos_sin_cache=cos_sin_cache,
        k_cache=k_cache, kv_slot_mapping=kv_slot_mapping, compressed_kv=compressed_kv))
    if check_bounds_enabled():
        _check_bounds(emit_segments, update_segments, resets, T, run_state.shape[0])
    for values in (emit, update):
        if values["num_rows"]:
            _launch(merge_spec, device, values)
    if resets.numel():
        run_state[resets, :head_size] = float("-inf")
        run_state[resets, head_size : 3 * head_size] = 0.0
    if T:
        _launch(store_spec, device, store)


def _store_values(spec, T: int, compressed_kv, req, positions, slot_mapping, weight, eps, cos_sin,
                  k_cache, kv_slot_mapping, kv_block_size) -> Values:
    """The store kernel's values: the step's T rows (slot_mapping must cover exactly kv's rows)."""
    rows = row_values(req, positions, slot_mapping, kv_slot_mapping)
    if rows["num_rows"] != T:
        raise _invalid("slot_mapping", f"have T = kv.shape[0] = {T} entries", rows["num_rows"])
    store = store_values(spec, weight, eps, cos_sin, k_cache, kv_block_size)
    return rows | store | compressed_values(spec, compressed_kv, T)


def _reset_rows(reset_rows: object) -> torch.Tensor:
    rows = _tensor("reset_rows", reset_rows, torch.int64)
    if rows.dim() != 1:
        raise _invalid("reset_rows", "be a 1-D int64 tensor of run_state rows", f"shape {tuple(rows.shape)}")
    return rows


def _check_bounds(emit: torch.Tensor, update: torch.Tensor, resets: torch.Tensor, T: int, rows: int) -> None:
    check_segment_bounds(emit, T, rows)
    check_segment_bounds(update, T, rows)
    bad = [r for r in resets.tolist() if not 0 <= r < rows]
    if bad:
        raise _invalid("reset_rows", f"hold run_state rows in [0, {rows})", bad)


def _named(**tensors: object) -> dict[str, torch.Tensor]:
    return {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor)}
