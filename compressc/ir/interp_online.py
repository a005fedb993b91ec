"""A NumPy interpreter of the lowered online C128 merge (docs/kernels.md §9), lane by lane.

`run_online` executes what the emitted kernel does: one CTA per segment (the "rows" grid of the
runtime's `launch_grid`), each walking the kernel-dialect program (`kd.cta_row`, `kd.segment`,
`kd.row`), then the row ops: the seeded running softmax over the segment's rows in batches of
`rows_in_flight` (a tail row past the segment loads its last row again and is not counted), the
family's `cc.pool_softmax` (x = a / l), and the two stores. One NumPy row per lane, each step one
fp32 operation; ex2 is NumPy's fp32 exp2 where the kernel uses ex2.approx (within 2 ulp).

Arguments use the ABI names: pointers are flat NumPy arrays from their first element, scalars
numbers (`args_from_online` builds them from torch tensors). run_state and compressed_kv are
written in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from compressc.ir.core import Module, Op
from compressc.ir.interp import Value, _memory, _schedule
from compressc.ir.interp_grid import GridError
from compressc.ir.interp_stages import F32, LOG2E, Memory, _ex2
from compressc.ir.kd import Node, program
from compressc.ir.launch import grid_rule
from compressc.ir.online import SEGMENT_FIELDS
from compressc.ir.verifier import VerifyError, verify
from compressc.specs.launch import launch_grid


@dataclass(slots=True)
class SegmentLanes:
    """One CTA's state while it runs its segment."""

    module: Module
    elems: int
    head_lanes: int
    mem: Memory
    row: int  # the segment's index: the CTA's
    seg: tuple[int, int, int, int, int]
    split: int = 1
    cluster: int = 1
    m: np.ndarray | None = None
    l: np.ndarray | None = None  # noqa: E741
    a: np.ndarray | None = None
    x: np.ndarray | None = None

    def span(self, start: np.ndarray | int) -> np.ndarray:
        """[lanes, E] element indices start + col .. start + col + E - 1 of every lane."""
        col = np.arange(self.head_lanes) * self.elems
        return (start + col)[:, None] + np.arange(self.elems)


def run_online(module: Module, args: Mapping[str, Value]) -> list[int]:
    """Run one launch of the lowered online merge; returns the segments whose body ran."""
    verify(module)
    if module.find("cc.online_merge") is None or module.find("kd.segment") is None:
        raise VerifyError(f"module @{module.name}: run_online needs a lowered online merge "
                          "(cc.online_merge and the kernel dialect's kd.segment)")
    sched = _schedule(module)
    mem = _memory(module, args)
    grid = launch_grid(grid_rule(module), mem.scalar("num_rows"), sm_count=4)
    done: list[int] = []
    for block in range(grid):
        env: dict = {"block": block, "module": module, "elems": sched.elems,
                     "head_lanes": sched.head_lanes, "mem": mem, "done": done}
        _walk(program(module), env)
    return done


def _walk(nodes: tuple[Node, ...], env: dict) -> None:
    for node in nodes:
        _RUN[node.op.name](node, env)


def _segment(node: Node, env: dict) -> None:
    row, mem = env["row"], env["mem"]
    if not 0 <= row < mem.scalar("num_rows"):
        raise GridError(f"kd.segment reads segment {row}, outside the {mem.scalar('num_rows')} launched")
    n = len(SEGMENT_FIELDS)
    seg = tuple(int(v) for v in mem["segments"][row * n : row * n + n])
    env["lanes"] = SegmentLanes(env["module"], env["elems"], env["head_lanes"], mem, row, seg)  # type: ignore[arg-type]


def _row(node: Node, env: dict) -> None:
    lanes = env["lanes"]
    if lanes.row in env["done"]:
        raise GridError(f"segment {lanes.row} ran twice")
    env["done"].append(lanes.row)
    for op in lanes.module.ops:
        stage = STAGES.get(op.name)
        if stage is not None:
            stage(lanes, op)


def _softmax_init(lanes: SegmentLanes, op: Op) -> None:
    shape = (lanes.head_lanes, int(op.attr("elems")))  # type: ignore[arg-type]
    lanes.m, lanes.l, lanes.a = np.full(shape, -np.inf, F32), np.zeros(shape, F32), np.zeros(shape, F32)


def _seed_state(lanes: SegmentLanes, op: Op) -> None:
    """(m, l, a) from the request's committed running state, where the segment reads one."""
    mem, head, read = lanes.mem, int(op.attr("head")), lanes.seg[2]  # type: ignore[arg-type]
    if read >= 0:
        at, state = read * mem.scalar("run_state_stride"), mem["run_state"]
        lanes.m, lanes.l, lanes.a = (state[lanes.span(at + k * head)].astype(F32) for k in range(3))


def _segment_batches(lanes: SegmentLanes, op: Op) -> None:
    """The segment's rows in order, a batch of `batch` loads at a time (a tail row past the
    segment loads its last row again and is not counted)."""
    base, rows = lanes.seg[0], lanes.seg[1]
    batch, ratio, head = (int(op.attr(k)) for k in ("batch", "ratio", "head"))  # type: ignore[arg-type]
    m, l, a = lanes.m, lanes.l, lanes.a  # noqa: E741
    for k0 in range(0, max(rows, 0), batch):
        loads = [_load(lanes, base + min(k0 + r, rows - 1), ratio, head) for r in range(batch)]
        for r, (kv, sc, ap) in enumerate(loads):
            if k0 + r < rows:
                m, l, a = _update(m, l, a, kv, sc, ap)  # noqa: E741
    lanes.m, lanes.l, lanes.a = m, l, a


def _load(lanes: SegmentLanes, t: int, ratio: int, head: int) -> tuple:
    mem = lanes.mem
    p = int(mem["positions"][t])
    kv = mem["kv"][lanes.span(t * mem.scalar("kv_stride"))]
    sc = mem["score"][lanes.span(t * mem.scalar("score_stride"))]
    return kv, sc, mem["ape"][lanes.span((p & (ratio - 1)) * head)]


def _update(m, l, a, kv, sc, ap):  # noqa: E741
    """docs/kernels.md §9.3 for one row, each operation rounded to fp32."""
    s = (sc + ap).astype(F32)
    with np.errstate(invalid="ignore"):
        m_new = np.fmax(m, s)
        alpha, beta = _ex2((m - m_new) * LOG2E), _ex2((s - m_new) * LOG2E)
        return m_new, l * alpha + beta, a * alpha + kv * beta


def _emit_pooled(lanes: SegmentLanes, op: Op) -> None:
    emit = lanes.seg[3]
    if emit >= 0:
        lanes.mem["compressed_kv"][lanes.span(emit * int(op.attr("head")))] = lanes.x  # type: ignore[arg-type]


def _write_state(lanes: SegmentLanes, op: Op) -> None:
    mem, head, write = lanes.mem, int(op.attr("head")), lanes.seg[4]  # type: ignore[arg-type]
    if write >= 0:
        at = write * mem.scalar("run_state_stride")
        for k, value in enumerate((lanes.m, lanes.l, lanes.a)):
            mem["run_state"][lanes.span(at + k * head)] = value


def _cta_row(node: Node, env: dict) -> None:
    env["row"] = env["block"]


def _nothing(node: Node, env: dict) -> None:
    """The prologue changes no byte."""


_RUN: dict[str, Callable[[Node, dict], None]] = {
    "kd.lanes": _nothing, "kd.static_smem": _nothing,
    "kd.cta_row": _cta_row, "kd.segment": _segment, "kd.row": _row,
}
def _pooled(lanes: SegmentLanes, op: Op) -> None:
    """kd.pooled: x = a / l (IEEE division), the segment's one CTA."""
    lanes.x = lanes.a / lanes.l  # type: ignore[operator]


STAGES: dict[str, Callable] = {"kd.softmax_init": _softmax_init, "kd.seed_state": _seed_state,
                               "kd.segment_batches": _segment_batches, "kd.pooled": _pooled,
                               "kd.emit_pooled": _emit_pooled, "kd.write_state": _write_state}


def args_from_online(spec, kv, score, ape, positions, run_state, segments, compressed_kv) -> dict[str, Value]:
    """The ABI arguments of one launch from CPU torch tensors (run_state and compressed_kv shared,
    so `run_online` writes them in place); scalars from the runtime's own checks."""
    from compressc.runtime.validate_online import online_values

    values = online_values(spec, kv, score, ape, positions, run_state, segments, compressed_kv)
    tensors = {"kv": kv, "score": score, "ape": ape, "positions": positions, "run_state": run_state,
               "segments": segments, "compressed_kv": compressed_kv}
    args: dict[str, Value] = {name: _flat(t).numpy() for name, t in tensors.items()}
    for name in ("num_rows", "kv_stride", "score_stride", "run_state_stride"):
        args[name] = int(values[name])
    return args


def _flat(t):
    extent = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    return t.as_strided((extent,), (1,))
