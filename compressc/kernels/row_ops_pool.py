"""The emitter of the pooling merge's kd ops (compressc/passes/lower_row_pool.py): one small
function per op, printing its slots and counts."""

from __future__ import annotations

from compressc.ir.core import Module, Op
from compressc.kernels.source import Source

_CLUSTER_BARRIER = {"merge": "every CTA's own merge is done: rank 0's slots are free",
                    "stores": "the stores are visible to rank 0"}


def _a(op: Op, key: str) -> int:
    return int(op.attr(key))  # type: ignore[arg-type]


def fold_partial(src: Source, sum_at: str, acc_at: str,
                 regs: tuple[str, str, str] = ("rM", "rL", "rA")) -> None:
    """Fold a partial (max mg, sum at `sum_at`, weighted sum at `acc_at`) into `regs`[e] (the
    running max, sum and weighted sum): every merge of partials (split groups, a cluster's
    ranks, c128a_split's workspace) folds this way."""
    m, l, a = regs  # noqa: E741
    src.line(f"m_new = ops.fmax({m}[e], mg)")
    src.line(f"alpha = ops.ex2(({m}[e] - m_new) * LOG2E)")
    src.line("beta = ops.ex2((mg - m_new) * LOG2E)")
    src.line(f"{l}[e] = {l}[e] * alpha + {sum_at} * beta")
    src.line(f"{a}[e] = {a}[e] * alpha + {acc_at} * beta")
    src.line(f"{m}[e] = m_new")


def put_partials(src: Source, module: Module, op: Op) -> None:
    """Groups 1..K-1 store their (max, sum, weighted sum) at slot + k * stride + group * head."""
    base, stride, head = _a(op, "slot"), _a(op, "stride"), _a(op, "head")
    src.line("# merge the split groups' (max, sum, weighted sum) in group order, through smem")
    src.line("if group > 0:")
    with src.indent():
        src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
    with src.indent(2):
        for k, name in enumerate(("rM", "rL", "rA")):
            src.line(f"sBuf[{base + k * stride} + group * {head} + col + e] = {name}[e]")


def fold_groups(src: Source, module: Module, op: Op) -> None:
    base, stride, head = _a(op, "slot"), _a(op, "stride"), _a(op, "head")
    src.line("if group == 0:")
    with src.indent():
        src.line(f"for g in range_constexpr(1, {_a(op, 'groups')}):")
        with src.indent():
            src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
            with src.indent():
                slot = f"g * {head} + col + e"
                src.line(f"mg = sBuf[{base} + {slot}]")
                src.line("# a group whose rows are all absent (C4 sequence start) has m = -inf: skip")
                src.line("# it, as ex2((-inf) - (-inf)) is NaN; skipping is exact (alpha 1, beta 0)")
                src.line('if mg > Float32(-float("inf")):')
                with src.indent():
                    fold_partial(src, f"sBuf[{base + stride} + {slot}]",
                                  f"sBuf[{base + 2 * stride} + {slot}]")


def cluster_barrier(src: Source, module: Module, op: Op) -> None:
    ranks = _a(op, "ranks")
    if op.attr("after") == "merge":
        src.line(f"# the cluster's {ranks} partials meet in rank order: ranks 1..{ranks - 1} store theirs "
                 "into rank 0's smem")
    src.line(f"ops.cluster_sync()  # {_CLUSTER_BARRIER[str(op.attr('after'))]}")


def dsmem_put_partials(src: Source, module: Module, op: Op) -> None:
    """Rank k's group 0 stores its partial into slot k - 1 of rank 0's region (st.shared::cluster)."""
    base, stride, head = _a(op, "slot"), _a(op, "stride"), _a(op, "head")
    src.line(f"if (rank > 0){' & (group == 0)' if op.attr('group0') else ''}:")
    with src.indent():
        src.line("sbuf_at = sBuf.iterator.toint()")
        src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
        with src.indent():
            for k, name in enumerate(("rM", "rL", "rA")):
                at = f"sbuf_at + ({base + k * stride} + (rank - 1) * {head} + col + e) * 4"
                src.line(f"ops.st_dsmem_f32({at}, 0, {name}[e])")


def fold_ranks(src: Source, module: Module, op: Op) -> None:
    """Rank 0 folds ranks 1..S-1's partials from its own smem, in rank order."""
    base, stride, head = _a(op, "slot"), _a(op, "stride"), _a(op, "head")
    src.line(f"if (rank == 0){' & (group == 0)' if op.attr('group0') else ''}:")
    with src.indent():
        src.line(f"for k in range_constexpr({_a(op, 'ranks') - 1}):")
    slot, absent = f"k * {head} + col + e", bool(op.attr("absent"))
    with src.indent(2):
        src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
    with src.indent(3):
        src.line(f"mg = sBuf[{base} + {slot}]")
        if absent:
            src.line("# a part whose rows are all absent has m = -inf: skipped (see the CTA merge)")
            src.line('if mg > Float32(-float("inf")):')
    with src.indent(3 + int(absent)):
        fold_partial(src, f"sBuf[{base + stride} + {slot}]", f"sBuf[{base + 2 * stride} + {slot}]")


def pooled(src: Source, module: Module, op: Op) -> None:
    src.line(f"rX = cute.make_rmem_tensor(cute.make_layout({_a(op, 'elems')}), Float32)")
    src.line(f"for e in range_constexpr({_a(op, 'elems')}):")
    src.line("    rX[e] = rA[e] / rL[e]  # IEEE division, as the reference")


def only(line: str):
    def emit(src: Source, module: Module, op: Op) -> None:
        src.line(line)
        src.depth += 1

    return emit
