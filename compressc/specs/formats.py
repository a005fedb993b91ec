"""Cache formats as data: which channels are encoded how, and where their bytes go
(docs/kernels.md §8, docs/formats.md §1).

Every format starts from the same values: the RMSNorm output with its rope channels
rotated, each rounded once to bf16 (`v = bf16([y_nope | rot(y_rope)])`), then, when the
spec asks, the indexer's Hadamard rotation. A format is a list of regions, each a run of
channels with one codec and (for a quantised codec) one scale rule. The value bytes of
the regions follow each other in region order; their scales follow each other in the
scale slot, then `pad_scales` zero bytes. The generic lowering (`ir.from_spec`) turns a
format into one `cc.quant` per scaled region and one `cc.store` per region; nothing else
in the compiler knows a format by name.
"""

from __future__ import annotations

from dataclasses import dataclass

CODEC_BITS = {"e4m3": 8, "e2m1": 4, "bf16": 16}
SCALE_KINDS = ("block", "tensor")
SCALE_STORED = ("byte", "f32", "none")
PARTS = ("nope", "rope", "all")


@dataclass(frozen=True, slots=True)
class ScaleRule:
    """How a quantised region finds its scale and where it keeps it.

    kind "block": one power of two 2^E per `quant_block` channels, from the block's amax:
      floor_on "scale": raw = max(floor, amax / qmax); "amax": raw = max(amax, floor) / qmax,
      the division an IEEE one (`divide`) or a multiplication by fp32(1 / qmax);
      E = ceil(log2 raw) from raw's bits (the UE8M0 byte e8 = E + 127); values times 2^-E.
    kind "tensor": every value times RN(1 / scale[0]) of a device scalar; nothing stored.
    stored: "byte" (e8), "f32" (2^E as a little-endian fp32) or "none".
    """

    kind: str
    qmax: float = 448.0
    floor: float = 0.0
    floor_on: str = "scale"
    divide: bool = True
    stored: str = "byte"

    @property
    def bytes_per_scale(self) -> int:
        return {"byte": 1, "f32": 4, "none": 0}[self.stored]


@dataclass(frozen=True, slots=True)
class Region:
    """Channels `part` of the head, each encoded with `codec` under `scale` (None: bf16)."""

    part: str
    codec: str
    scale: ScaleRule | None = None

    def channels(self, head: int, rope: int) -> tuple[int, int]:
        nope = head - rope
        return {"nope": (0, nope), "rope": (nope, head), "all": (0, head)}[self.part]


@dataclass(frozen=True, slots=True)
class CacheFormat:
    """One cache format. `kernels`: the family members that may write it; `row_stride`
    "static" (token rows `token_stride` bytes apart, scales block-planar after the page's
    rows) or "runtime" (rows k_cache.stride(1) bytes apart, no scales); `scale_operand`:
    the device scalar a "tensor" scale reads; `rotatable`: the spec's `rotate` flag is legal;
    `suffix`: what the variant name carries ("" for a kernel's first format)."""

    name: str
    kernels: tuple[str, ...]
    regions: tuple[Region, ...]
    pad_scales: int = 0
    row_stride: str = "static"
    scale_operand: str = ""
    rotatable: bool = False
    suffix: str = ""
    heads: tuple[int, ...] = ()  # the only legal head sizes (empty: any the layout rules allow)
    quant_block: int = 0  # the only legal quant block (0: the spec's)
    doc: str = ""

    def layout(self, head: int, rope: int, quant_block: int) -> list[tuple[Region, int, int, int, int]]:
        """(region, lo, hi, value offset, scale offset) per region, offsets in bytes."""
        out, value, scale = [], 0, 0
        for region in self.regions:
            lo, hi = region.channels(head, rope)
            out.append((region, lo, hi, value, scale))
            value += (hi - lo) * CODEC_BITS[region.codec] // 8
            if region.scale is not None and region.scale.kind == "block":
                scale += (hi - lo) // quant_block * region.scale.bytes_per_scale
        return out

    def token_bytes(self, head: int, rope: int) -> int:
        return sum((hi - lo) * CODEC_BITS[r.codec] // 8 for r, lo, hi, _, _ in self.layout(head, rope, 1))

    def scale_bytes(self, head: int, rope: int, quant_block: int) -> int:
        regions = self.layout(head, rope, quant_block)
        used = sum((hi - lo) // quant_block * r.scale.bytes_per_scale
                   for r, lo, hi, _, _ in regions if r.scale is not None and r.scale.kind == "block")
        return used + self.pad_scales if used else 0


# docs/kernels.md §3: raw = max(1e-4, amax / 448), the floor on the scale (vLLM's CUDA rule)
UE8M0_E4M3 = ScaleRule("block", qmax=448.0, floor=1e-4, floor_on="scale", stored="byte")
# docs/kernels.md §8: the floor on amax, the scale kept as the fp32 value 2^E
POW2_F32_E4M3 = ScaleRule("block", qmax=448.0, floor=1e-4, floor_on="amax", stored="f32")
# docs/kernels.md §8: amax floored at 6 * 2^-126, times fp32(1/6), the UE8M0 byte
UE8M0_E2M1 = ScaleRule("block", qmax=6.0, floor=6.0 * 2.0**-126, floor_on="amax", divide=False, stored="byte")
# docs/kernels.md §8: RN(1 / fp8_scale[0]), one device scalar per tensor
TENSOR_E4M3 = ScaleRule("tensor", qmax=448.0, stored="none")

MAIN = ("c4a", "c128a_store", "csa", "c128a_split")  # csa: its main part is a c4a
FORMATS: dict[str, CacheFormat] = {f.name: f for f in (
    CacheFormat("fp8_ds_mla", MAIN, (Region("nope", "e4m3", UE8M0_E4M3), Region("rope", "bf16")),
                pad_scales=1, doc="packed: e4m3 nope + bf16 rope, UE8M0 block scales, one pad byte"),
    CacheFormat("full_bf16", MAIN, (Region("all", "bf16"),), row_stride="runtime", suffix="full_bf16",
                doc="every channel as bf16, rows k_cache.stride(1) apart (docs/kernels.md §8)"),
    CacheFormat("full_fp8", MAIN, (Region("all", "e4m3", TENSOR_E4M3),), row_stride="runtime",
                scale_operand="fp8_scale", suffix="full_fp8",
                doc="every channel e4m3 times 1/fp8_scale[0] (docs/kernels.md §8)"),
    CacheFormat("indexer_fp8", ("indexer_fp8",), (Region("all", "e4m3", POW2_F32_E4M3),), rotatable=True,
                doc="e4m3 with one fp32 power-of-two scale per token (docs/kernels.md §8)"),
    CacheFormat("indexer_mxfp4", ("indexer_mxfp4",), (Region("all", "e2m1", UE8M0_E2M1),), rotatable=True,
                heads=(128,), quant_block=32,
                doc="e2m1 nibbles, UE8M0 scale per 32 channels (docs/kernels.md §8)"),
)}


def formats_for(kernel: str) -> list[str]:
    """The formats `kernel` may write, its default first."""
    return [name for name, f in FORMATS.items() if kernel in f.kernels]
