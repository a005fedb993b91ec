"""lower-row's pooling merge: the split groups' (max, sum, weighted sum) partials through the
CTA's smem in group order, then a cluster's ranks' through rank 0's smem over DSMEM
(docs/kernels.md §5), then the pooled value; the rest of the row runs on group 0 (rank 0)."""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields
from compressc.ir.schedule import Schedule
from compressc.passes.lower_row_split import split_merge_ops
from compressc.passes.plan_smem import merge_slots


def _kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def pool_ops(module: Module, op: Op) -> list[Op]:
    window = module.find("cc.window")
    sched = Schedule.of(module)
    if window is None:  # the online merge kernel's pool: one CTA's lanes, no merge
        return [_kd("pooled", elems=sched.elems)]
    head, elems = int(op.attr("head")), sched.elems  # type: ignore[arg-type]
    where = {"head": head, "elems": elems}
    ops = []
    if sched.split > 1 or sched.cluster > 1:
        where |= {"slot": int(op.get("smem_offset")) // 4, "stride": merge_slots(module) * head}  # type: ignore[arg-type]
    if sched.split > 1:
        ops += [_kd("put_partials", **where), _kd("cta_barrier"),
                _kd("fold_groups", **where, groups=sched.split)]
    if sched.global_split:  # c128a_split: the ranks meet in the global workspace (docs/kernels.md §13)
        ops += split_merge_ops(module, head, int(op.get("smem_offset")) // 4)  # type: ignore[arg-type]
    elif sched.cluster > 1:
        absent = int(window.attr("window")) > int(window.attr("ratio"))  # type: ignore[arg-type]
        group0 = sched.split > 1
        ops += [_kd("cluster_barrier", after="merge", ranks=sched.cluster),
                _kd("dsmem_put_partials", **where, group0=group0),
                _kd("cluster_barrier", after="stores", ranks=sched.cluster),
                _kd("fold_ranks", **where, ranks=sched.cluster, absent=absent, group0=group0)]
    ops.append(_kd("pooled", elems=elems))
    ops += [_kd("only_group0")] if sched.split > 1 else []
    if sched.global_split:
        return ops + [_kd("only_last")]
    return ops + ([_kd("only_rank0")] if sched.cluster > 1 else [])
