"""lower-row's c128a_split merge (docs/kernels.md §13): S CTAs of a plain launch pool one row.

Each CTA's group 0 publishes its (max, sum, weighted sum) partial into the row's region of
the global workspace (`kd.publish_partial`) and counts its arrival (`kd.arrive_last`: the
counter's atom.inc elects the last of the S); the last CTA (`kd.if_last` .. `kd.end_if`)
splits the head between all its threads (`kd.split_lanes`: `me` channels a thread), loads
the S partials from L2 and folds them in rank order (`kd.load_partials`, `kd.fold_partials`,
inside `kd.if_tidx` .. `kd.end_if` where the CTA has more threads than channels), then hands
the merged (sum, weighted sum) to group 0's lanes: directly where a thread's channels are
its lane's (`kd.merged_to_lanes`), else through smem (`kd.merged_to_smem`, then after the
barrier `kd.lanes_from_smem`).
"""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields
from compressc.ir.schedule import Schedule
from compressc.specs.abi import split_workspace_row

END_IF = Op("kd.end_if")


def _kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def split_merge_ops(module: Module, head: int, slot: int) -> list[Op]:
    """The merge of the row's S partials; `slot`: the pool's smem slot (fp32 words)."""
    sched = Schedule.of(module)
    ctas, elems, threads = sched.global_split, sched.elems, sched.threads
    me = max(1, head // threads)  # channels a thread of the last CTA folds
    publish = _kd("publish_partial", head=head, ctas=ctas, elems=elems, bits=min(128, 32 * elems),
                  row_bytes=4 * split_workspace_row(head), group0=sched.split > 1)
    # the CTA's arrival count, past the merged (sum, weighted sum) the fold leaves at `slot`
    arrive = _kd("arrive_last", ctas=ctas, flag=slot + 2 * head)
    fold = [_kd("load_partials", head=head, ctas=ctas, me=me, vec=min(4, me)),
            _kd("fold_partials", me=me, ctas=ctas)]
    if threads == sched.head_lanes:  # mcol == col: a thread's channels are its own lane's
        fold, after = [*fold, _kd("merged_to_lanes", me=me)], []
    else:
        fold = [*fold, _kd("merged_to_smem", me=me, slot=slot, head=head)]
        after = [_kd("lanes_from_smem", elems=elems, slot=slot, head=head)]
    if threads > head:  # the threads past the head fold nothing: the fold's values live inside the `if`
        fold = [_kd("if_tidx", below=head), *fold, END_IF]
    return [publish, arrive, _kd("if_last"), _kd("split_lanes", me=me, ctas=ctas, elems=elems), *fold, *after,
            END_IF]
