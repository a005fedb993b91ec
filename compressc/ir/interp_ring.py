"""The interpreter of the C128 ring state (docs/kernels.md §10), mirroring compressc.kernels.ring.

`ring_window` and `ring_base` find, once per active row, what the emitted `kd.ring_window` and
`kd.ring_base` compute (`t0`, `ring_split`, `ring_base`, in the row's registers); `load_row` is
the row load of a window that pools from them: each thread's window row from this launch
(kv, score + ape) or from the ring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from compressc.ir.core import Op

if TYPE_CHECKING:
    from compressc.ir.interp_stages import Lanes

F32 = np.float32


def ring_window(lanes: Lanes, op: Op) -> None:
    """kd.ring_window: t0 (the launched row of window row 0) and ring_split (the first window
    row in the request's chunk)."""
    t0 = lanes.row - (int(op.attr("window")) - 1)  # type: ignore[arg-type]
    lanes.regs["t0"], lanes.regs["ring_split"] = t0, int(lanes.mem["query_start_loc"][lanes.req]) - t0


def ring_base(lanes: Lanes, op: Op) -> None:
    """kd.ring_base: the state_cache word of window row 0 in the request's ring."""
    mem, window = lanes.mem, int(op.attr("window"))  # type: ignore[arg-type]
    block = int(mem["block_table"][lanes.req * mem.scalar("block_table_stride")])
    row0 = (lanes.pos - (window - 1)) % mem.scalar("ring_capacity")
    lanes.regs["ring_base"] = block * mem.scalar("ring_block_stride") + row0 * int(op.attr("row_words"))  # type: ignore[arg-type]


def load_row(lanes: Lanes, head: int, width: int, i: np.ndarray, col: np.ndarray) -> tuple:
    """(kv, score) [threads, E] of each thread's window row i (a kd.ring_row): launched row
    t0 + i (score + ape) where it is in the request's chunk, else the ring row (its score
    already has ape)."""
    assert "ring_base" in lanes.regs, "kd.ring_window and kd.ring_base run before the window"
    mem, regs = lanes.mem, lanes.regs
    t0, split, base = regs["t0"], regs["ring_split"], regs["ring_base"]
    here = i >= split
    t = np.where(here, t0 + i, 0)  # rows the other branch reads are never indexed
    kv = mem["kv"][lanes.span(t * mem.scalar("kv_row_stride") + col)]
    sc = mem["score"][lanes.span(t * mem.scalar("score_row_stride") + col)]
    sc = sc + mem["ape"][lanes.span(i * head + col)]  # one fp32 add, as the kernel
    at = np.where(here, 0, base + i * 2 * width) + col
    state = mem["state_cache"]
    ring_kv, ring_sc = state[lanes.span(at)], state[lanes.span(at + width)]
    return np.where(here[:, None], kv, ring_kv), np.where(here[:, None], sc, ring_sc).astype(F32)


RING_RUN = {"kd.ring_window": ring_window, "kd.ring_base": ring_base}


def args_from_ring_scenario(scenario, out) -> dict:
    """The ring kernel's ABI arguments of a `compressc.scenarios_ring.RingScenario` as NumPy,
    writing into `out` (fp32 [T, head]); scalars from the runtime's own argument checks."""
    from compressc.ir.interp import _storage
    from compressc.runtime import ring, validate
    from compressc.specs.abi import abi

    s, spec = scenario, scenario.spec
    values = validate.row_values(s.token_to_req_indices, s.positions, s.slot_mapping, s.kv_slot_mapping)
    values |= ring.ring_state_values(spec, s.state_cache, s.block_table, s.capacity)
    values |= ring.ring_input_values(spec, s.kv, s.score, s.ape, s.query_start_loc, s.T)
    tensors = {"state_cache": s.state_cache, "token_to_req_indices": s.token_to_req_indices,
               "positions": s.positions, "slot_mapping": s.slot_mapping, "block_table": s.block_table,
               "compressed_kv": out, "kv_slot_mapping": s.kv_slot_mapping, "kv": s.kv, "score": s.score,
               "ape": s.ape, "query_start_loc": s.query_start_loc}
    params = abi(spec)
    return {p.name: _storage(tensors[p.name]).numpy() if p.kind == "ptr" else values[p.name] for p in params}
