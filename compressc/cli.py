"""The `compressc` command line: click commands only; the work lives in the package."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from compressc import __version__
from compressc.specs.errors import SpecError
from compressc.specs.family import KERNELS, make_spec

PIPELINE_HELP = (
    "Pass pipeline: 'default' (the tuned schedule of the variant and --arch when "
    "compressc/passes/tuned.json has one, else the derived default), 'derived', 'baseline' or a string like "
    "'thread-map{elems-per-lane=4},vectorize{bits=128},lower-reduction,plan-smem,window-prefetch'."
)


class UserError(click.ClickException):
    """An error the user can fix: printed on one line, exit status 1, no traceback."""


ARCH_HELP = "GPU arch whose tuned schedule 'default' picks (sm90 = sm_90a)."


def _resolve(pipeline: str, module, arch: str) -> str:
    """resolve_pipeline, saying on stderr whether 'default' is a tuned or the derived schedule."""
    from compressc.cache.arch import normalize_arch
    from compressc.passes.manager import resolve_pipeline
    from compressc.passes.tuned import TunedFileError, describe, load_tuned, tuned_entry

    try:
        arch = normalize_arch(arch)
        table = load_tuned()
    except (ValueError, TunedFileError) as err:
        raise UserError(str(err)) from None
    if pipeline.strip() == "default":
        source = describe(tuned_entry(module.name, arch, table), module.name, arch)
        click.echo(f"// pipeline 'default' = {source}", err=True)
    return resolve_pipeline(pipeline, module, arch, table)


def _spec_options(fn):
    fn = click.option(
        "--weight-dtype",
        type=click.Choice(["bf16", "f32"]),
        default="bf16",
        show_default=True,
        help="dtype of rms_norm_weight (a variant axis).",
    )(fn)
    fn = click.option(
        "--rope", type=int, default=64, show_default=True, help="Rope dims at the end of the head."
    )(fn)
    fn = click.option(
        "--quant-block",
        type=int,
        default=None,
        help="Channels per quant scale (default: the kernel's shipped value).",
    )(fn)
    fn = click.option("--head-size", type=int, default=None, help="Channels per compressed token.")(fn)
    fn = click.option(
        "--spec",
        "kernel",
        type=click.Choice(KERNELS),
        default=None,
        help="Kernel of the family (SPEC.md §1).",
    )(fn)
    return fn


def _make_spec(kernel, head_size, quant_block, rope, weight_dtype):
    try:
        return make_spec(kernel, head_size, quant_block, rope=rope, weight_dtype=weight_dtype)
    except SpecError as err:
        raise UserError(str(err)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="compressc")
def main() -> None:
    """compressc: an ahead-of-time compiler for DeepSeek-V4 KV-compressor kernels.

    \b
    Build and ship kernels (no GPU needed):
      compressc build --arch sm90                       cubins for the default matrix, into the cache
      compressc wheel --arch sm90 --out dist/           an installable kernel-pack wheel
      compressc inspect                                 every kernel from packs and the cache
      compressc cache verify                            re-hash the cache (also: ls, prune, clear, why)
      compressc tune --arch sm90 --prepare DIR          schedule search (then --measure on a GPU, --apply)
    \b
    Every stage prints as text:
      compressc opt --spec c4a --print-ir-after-all     spec IR and each pass's output
      compressc emit --spec c4a                         the generated CuTe DSL kernel
    \b
    Environment (read once, at start-up):
      COMPRESSC_CACHE_DIR   the kernel cache (default ~/.cache/compressc)
      COMPRESSC_NO_JIT      1: the runtime never compiles; a missing kernel is an error
                            that prints the `compressc build` command to run
      COMPRESSC_JOBS        compile processes (default: the number of cores)
      COMPRESSC_LOCK_TIMEOUT  seconds to wait for another process's build (default 600)
      COMPRESSC_CHECK_BOUNDS  1: check index values before each launch (one sync a call)
    """


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@_spec_options
@click.option(
    "-p",
    "--pipeline",
    default=None,
    help=PIPELINE_HELP + " Without -p, FILE is only verified "
    "and re-printed; with --spec the default pipeline runs.",
)
@click.option("--print-ir-after-all", is_flag=True, help="Print the module after every pass.")
@click.option(
    "--print-ir-after-change", is_flag=True, help="Print the module after each pass that changed it."
)
@click.option("--time-passes", is_flag=True, help="Print how long each pass took.")
@click.option("--arch", default="sm90", show_default=True, help=ARCH_HELP)
def opt(
    file,
    kernel,
    head_size,
    quant_block,
    rope,
    weight_dtype,
    pipeline,
    print_ir_after_all,
    print_ir_after_change,
    time_passes,
    arch,
):
    """Parse, verify and lower IR; print the result to stdout.

    \b
    Examples:
      compressc opt --spec c4a --print-ir-after-all
      compressc opt --spec c4a -p 'thread-map{elems-per-lane=4},vectorize{bits=64},lower-reduction,plan-smem'
      compressc opt lowered.cir                       (verify a saved stage and re-print it)

    \b
    Passes and their options (pipeline syntax: pass{opt=value,...},pass,...):
      thread-map{elems-per-lane=N,window-split=K}  which lane owns which channels
        {grid=auto|runs|tiled|rows,rows-per-cta=R,   and which CTA owns which rows
         ctas-per-sm=N,min-ctas-per-sm=M,
         cluster-split=1|2|4|8}                    a cluster of CTAs pools one window
      vectorize{bits=32|64|128}                    vector width of each global access
      lower-reduction{order=down|up}               shuffle trees + cross-warp exchanges
      plan-smem                                    shared-memory slots and barriers
      window-prefetch{rows=N,operands-early=B,     window rows loaded before first update,
        page-lookup=auto|lane|row,occupancy=B,     epilogue operands early, page lookups,
        stage=regs|smem,overlap-launch=B,          .minnctapersm hint, smem-staged window,
        l2-prefetch=B}                             C128A store under compress, L2 page prefetch
    """
    from compressc.ir import ParseError, parse_module, print_module
    from compressc.ir.from_spec import module_from_spec
    from compressc.ir.verifier import VerifyError
    from compressc.passes.manager import PassManager, PipelineError, parse_pipeline

    if (file is None) == (kernel is None):
        raise UserError("give exactly one of FILE or --spec (e.g. `compressc opt --spec c4a`)")
    try:
        if file is not None:
            module = parse_module(file.read_text(), str(file))
        else:
            module = module_from_spec(_make_spec(kernel, head_size, quant_block, rope, weight_dtype))
            pipeline = pipeline or "default"
        passes = parse_pipeline(_resolve(pipeline or "", module, arch))
        out = PassManager(
            passes,
            print_ir_after_all,
            print_ir_after_change,
            time_passes,
            out=lambda s: click.echo(s, err=True),
        ).run(module)
    except (ParseError, VerifyError, PipelineError) as err:
        raise UserError(str(err)) from None
    click.echo(print_module(out), nl=False)


@main.command()
@_spec_options
@click.option("-p", "--pipeline", default="default", show_default=True, help=PIPELINE_HELP)
@click.option("--arch", default="sm90", show_default=True, help=ARCH_HELP)
def emit(kernel, head_size, quant_block, rope, weight_dtype, pipeline, arch):
    """Print the CuTe DSL kernel module generated for one variant.

    \b
    Examples:
      compressc emit --spec c4a --head-size 512 --quant-block 64
      compressc emit --spec indexer_fp8 -p baseline > indexer.py
    """
    from compressc.ir.from_spec import module_from_spec
    from compressc.ir.verifier import VerifyError
    from compressc.kernels.emitter import emit as emit_source
    from compressc.passes.manager import (
        PassManager,
        PipelineError,
        parse_pipeline,
        pipeline_string,
    )

    if kernel is None:
        raise UserError("--spec is required (one of: " + ", ".join(KERNELS) + ")")
    module = module_from_spec(_make_spec(kernel, head_size, quant_block, rope, weight_dtype))
    try:
        passes = parse_pipeline(_resolve(pipeline, module, arch))
        click.echo(emit_source(PassManager(passes).run(module), pipeline_string(passes)), nl=False)
    except (VerifyError, PipelineError) as err:
        raise UserError(str(err)) from None


from compressc.cli_build import build  # noqa: E402
from compressc.cli_cache import cache, inspect_cmd, wheel  # noqa: E402
from compressc.cli_tune import tune  # noqa: E402

main.add_command(build)
main.add_command(wheel)
main.add_command(inspect_cmd)
main.add_command(cache)
main.add_command(tune)

if __name__ == "__main__":
    sys.exit(main())
