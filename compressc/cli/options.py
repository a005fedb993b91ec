"""The option groups the commands share: one variant's axes, named once."""

from __future__ import annotations

import re

import click

from compressc.specs.errors import SpecError
from compressc.specs.family import CHECKED_KERNELS, KERNELS, STATE_LAYOUTS, KernelSpec, make_spec
from compressc.specs.formats import FORMATS

DEFAULT_ROPE = 64
WEIGHT_DTYPES = click.Choice(["bf16", "f32"])


def archs_option(help_text: str):
    """--arch, repeatable, into `archs` (default sm90): build and wheel."""
    return click.option("--arch", "archs", multiple=True, default=("sm90",), show_default=True,
                        help=help_text)


INDEXERS = ("indexer_fp8", "indexer_mxfp4")
BOUNDS_HELP = (
    "The checked build (variant suffix _bounds, a cache entry of its own): every index an active row "
    "uses (request, block_table column and page, rope row, kv page) is checked in the kernel; a bad "
    "row is skipped and recorded, and the runtime raises IndexOutOfBoundsError naming tensor, row and "
    "value. The runtime serves it only with COMPRESSC_CHECK_BOUNDS=kernel (docs/kernels.md §3, "
    f"'Checked builds'). Kernels with one: {', '.join(CHECKED_KERNELS)} (paged state); csa, the ring "
    "and c128a_online have none: COMPRESSC_CHECK_BOUNDS=1 checks them on the host."
)


def variant_options(spec_help: str, *, matrix: bool = False, required: bool = False):
    """--spec, --head-size, --quant-block, --weight-dtype, --rope, --cache-format, --rotate,
    --state-layout, --indexer, --bounds: every axis of a variant's name (KernelSpec.variant), so any
    kernel the runtime asks for, and so any `compressc build` command KernelNotFoundError prints,
    can be named on every command.

    `matrix` (build, wheel): the axes narrow the default matrix to one kernel and default to
    None (both weight dtypes, the shipped rope); otherwise (opt, emit, cache why) they name
    one variant, bf16 and rope 64 unless given. `required`: --spec must be given.
    """
    with_spec = "With --spec: " if matrix else ""
    # (help text, default) per axis: narrowing the matrix, or naming one variant
    rope = (f"rope dims at the end of the head (default {DEFAULT_ROPE}).", None) if matrix \
        else ("rope dims at the end of the head.", DEFAULT_ROPE)
    weight = ("rms_norm_weight dtype (default: both).", None) if matrix \
        else ("rms_norm_weight dtype (a variant axis).", "bf16")
    block = "channels per quant scale" + ("." if matrix else " (default: the kernel's shipped value).")

    fmt = ("the cache format (docs/kernels.md §8; default: the kernel's first, fp8_ds_mla for the "
           "main KV).", None)
    rotate = ("the indexer's Hadamard rotation (default: off).", None) if matrix \
        else ("the indexer's Hadamard rotation.", False)

    def decorate(command):
        # applied bottom-up, so --help lists them in the order written here
        command = click.option("--bounds", is_flag=True, default=False,
                               help=BOUNDS_HELP + (" Without --spec: the checked build of every default "
                                                   "variant that has one." if matrix else ""))(command)
        command = click.option("--indexer", type=click.Choice(INDEXERS), default=None,
                               help=with_spec.replace("--spec", "--spec csa") + "the fused layer's indexer "
                               "part (default indexer_fp8; docs/kernels.md §12).")(command)
        command = click.option("--state-layout", type=click.Choice(STATE_LAYOUTS), default=None,
                               help=with_spec + "where the window's state lives: 'paged' (default) or "
                               "'ring' (c128a_compress only, docs/kernels.md §10).")(command)
        command = click.option("--rotate/--no-rotate", default=rotate[1], show_default=not matrix,
                               help=with_spec + rotate[0])(command)
        command = click.option("--cache-format", type=click.Choice(list(FORMATS)), default=fmt[1],
                               help=with_spec + fmt[0])(command)
        command = click.option("--rope", type=int, default=rope[1], show_default=not matrix,
                               help=with_spec + rope[0])(command)
        command = click.option("--weight-dtype", type=WEIGHT_DTYPES, default=weight[1],
                               show_default=not matrix, help=with_spec + weight[0])(command)
        command = click.option("--quant-block", type=int, default=None, help=with_spec + block)(command)
        command = click.option("--head-size", type=int, default=None,
                               help=f"{with_spec}channels per token.")(command)
        return click.option("--spec", "kernel", type=click.Choice(KERNELS), default=None, required=required,
                            help=spec_help)(command)

    return decorate


def variant_spec(kernel: str, head_size: int | None, quant_block: int | None, *, rope: int = DEFAULT_ROPE,
                 weight_dtype: str = "bf16", cache_format: str | None = None, rotate: bool = False,
                 state_layout: str | None = None, indexer: str | None = None,
                 bounds: bool = False) -> KernelSpec:
    """The variant the options name; a ClickException naming the option and the rule it breaks."""
    try:
        return make_spec(kernel, head_size, quant_block, rope=rope, weight_dtype=weight_dtype,
                         cache_format=cache_format, rotate=bool(rotate), state_layout=state_layout or "paged",
                         indexer=indexer, bounds=bounds)
    except SpecError as err:
        text = f"--bounds: {err.rule}" if err.field == "bounds" else str(err)
        raise click.ClickException(text) from None


# K/M/G alone are powers of 1024, as in du/sort -h; KB/MB/GB powers of 1000.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*$")


class SizeType(click.ParamType):
    """A byte count: 1000000, 10MB (10**7), 1GiB (2**30), 512K (2**19)."""

    name = "SIZE"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value).lower())
        if match is None or match[2] not in _UNITS:
            self.fail(
                f"{value!r} is not a size: give bytes, or a number with KB/MB/GB (powers of 1000) "
                "or KiB/MiB/GiB (powers of 1024), e.g. 10MB or 1GiB",
                param,
                ctx,
            )
        return int(float(match[1]) * _UNITS[match[2]])


SIZE = SizeType()
