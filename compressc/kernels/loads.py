"""The window's vector loads of one row into a batch fragment, shared by every window source
(the paged state, the ring, the online merge's inputs)."""

from __future__ import annotations

from compressc.kernels.source import Source


def row_loads(src: Source, ptr: str, at: str, frag: str, elems: int, vec: int, stream: bool) -> None:
    """`frag[:, r]` = ptr[at .. at + elems - 1], `vec` fp32 a load: read once (`stream`: the
    cache hint ld.global.L1::no_allocate.L2::evict_first, word by word) or a plain vector copy."""
    if not stream:
        src.line(f"cute.autovec_copy(cute.make_tensor({ptr} + cute.assume({at}, divby={vec}), "
                 f"cute.make_layout({elems})), {frag}[None, r])")
        return
    names = ", ".join(f"v{c}" for c in range(vec))
    for h in range(elems // vec):
        offset = f" + {h * vec}" if h else ""
        src.line(f"{names}, = ops.ld_stream({ptr}.toint() + ({at}{offset}) * 4, {vec})")
        for c in range(vec):
            src.line(f"{frag}[{h * vec + c}, r] = v{c}")
