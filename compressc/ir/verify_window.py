"""The verifier's rules for a cc.window's schedule (the window passes' fields, pipeline.md §6).

`fail(module, op, field, value, rule)` builds the verifier's error (as for the ring's rules).
"""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.ir.ring import Fail


def _verify_stage(module: Module, op: Op, window: int, split: int, fail: Fail) -> None:
    """A window staged in smem (the smem-stage pass) and the module's slots agree."""
    stage, dynamic = op.get("stage"), module.get("smem_dynamic")
    if stage not in (None, "regs", "smem"):
        raise fail(module, op, "stage", stage, "must be 'regs' or 'smem'")
    if stage != "smem":
        if dynamic:
            raise fail(module, None, "smem_dynamic", dynamic,
                        "must be 0 unless the window is staged in smem")
        return
    elems, threads = int(module.get("elems_per_lane", 0)), int(module.get("threads", 0))  # type: ignore[arg-type]
    if module.get("grid") != "tiled":
        raise fail(module, op, "stage", stage, f"'smem' needs the tiled grid, have {module.get('grid')!r}")
    if split != 1 or op.get("rows_in_flight") != window or op.get("page_lookup") != "lane":
        raise fail(module, op, "stage", stage,
                    "'smem' needs the whole window in one batch of one group with page_lookup='lane'")
    if elems % 4:
        raise fail(module, op, "stage", stage,
                    f"'smem' copies 16 bytes: elems_per_lane {elems} must be a multiple of 4")
    want = 2 * window * 2 * elems * 4 * threads
    if dynamic != want:
        raise fail(module, None, "smem_dynamic", dynamic,
                    f"must be {want}: two slots of {window} rows x 2 streams x {elems} fp32 "
                    f"x {threads} threads")


def verify_window(module: Module, op: Op, fail: Fail) -> None:
    """The window's schedule: split, rows in flight, page lookup, rescale, L2 prefetch, stage."""
    split = int(module.get("window_split", 1))  # type: ignore[arg-type]
    cluster = int(module.get("cluster_split", 1))  # type: ignore[arg-type]
    window = int(op.attr("window"))  # type: ignore[arg-type]
    if window % split:
        raise fail(module, None, "window_split", split, f"must divide the window of {window} rows")
    if window % (split * cluster):
        raise fail(module, None, "cluster_split", cluster,
                    f"times window_split {split} must divide the window of {window} rows")
    per_group = window // (split * cluster)
    rows = op.get("rows_in_flight")
    if rows is not None and (int(rows) < 1 or per_group % int(rows)):  # type: ignore[arg-type]
        raise fail(module, op, "rows_in_flight", rows,
                    f"must divide the {per_group} rows each split group pools")
    lookup = op.get("page_lookup")
    if lookup is not None and lookup not in ("lane", "row"):
        raise fail(module, op, "page_lookup", lookup, "must be 'lane' or 'row'")
    head_lanes = int(module.get("head_lanes", 0))  # type: ignore[arg-type]
    if op.get("rescale") not in (None, "batch", "row"):
        raise fail(module, op, "rescale", op.get("rescale"), "must be 'batch' or 'row'")
    if op.get("rescale") == "batch" and op.get("stage") == "smem":
        raise fail(module, op, "rescale", "batch",
                    "the smem-staged window updates row by row (rescale='row')")
    prefetch = op.get("l2_prefetch")
    if prefetch not in (None, True):
        raise fail(module, op, "l2_prefetch", prefetch, "must be true when set")
    if prefetch and (lookup != "lane" or window != int(op.attr("ratio"))):  # type: ignore[arg-type]
        raise fail(module, op, "l2_prefetch", prefetch,
                    "needs page_lookup='lane' and a one-stream window (window == ratio)")
    _verify_stage(module, op, window, split * cluster, fail)
    if lookup == "lane" and not (per_group <= 32 and head_lanes % 32 == 0):
        raise fail(module, op, "page_lookup", lookup,
                    f"'lane' needs at most 32 rows per split group (have {per_group}) and warps "
                    f"inside one group (head_lanes {head_lanes} a multiple of 32); use page-lookup{{by=row}}")
