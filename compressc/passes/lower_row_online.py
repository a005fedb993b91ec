"""lower-row's online merge kernel (docs/kernels.md §9): one CTA per segment, as kd ops.

`cc.online_merge` becomes the online softmax's registers (`kd.softmax_init`), their seed from
the request's committed running state (`kd.seed_state`) and the segment's token rows a batch
of `rows_in_flight` at a time (`kd.segment_batches`: every load of a batch, with its vector
width and cache hint, before its updates); `cc.online_store` the pooled row
(`kd.emit_pooled`) and the running state for the request's next chunk (`kd.write_state`),
kept in L2 with cache-hints.
"""

from __future__ import annotations

from compressc.ir.core import Module, Op, fields
from compressc.ir.schedule import Schedule


def _kd(name: str, **attrs: object) -> Op:
    return Op(f"kd.{name}", attrs=fields(**attrs))  # type: ignore[arg-type]


def merge_ops(module: Module, op: Op) -> list[Op]:
    sched, head = Schedule.of(module), int(op.attr("head"))  # type: ignore[arg-type]
    vec = int(op.get("vector_bits")) // 32  # type: ignore[arg-type]
    batches = _kd("segment_batches", batch=int(op.get("rows_in_flight")), elems=sched.elems, vec=vec,  # type: ignore[arg-type]
                  ratio=int(op.attr("ratio")), head=head, cache_hint=sched.cache_hints or "none")  # type: ignore[arg-type]
    return [_kd("softmax_init", elems=sched.elems), _kd("seed_state", elems=sched.elems, head=head, vec=vec),
            batches]


def store_ops(module: Module, op: Op) -> list[Op]:
    sched = Schedule.of(module)
    where = {"elems": sched.elems, "head": int(op.attr("head")), "bits": int(op.get("vector_bits")),  # type: ignore[arg-type]
             "keep": sched.cache_hints == "stream"}
    return [_kd("emit_pooled", **where), _kd("write_state", **where)]
