"""The `compressc` command line: click commands only; the work lives in the package."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from compressc import __version__
from compressc.cli.options import variant_options, variant_spec

PIPELINE_HELP = (
    "Pass pipeline: 'default' (the tuned schedule of the variant and --arch when "
    "compressc/passes/tuned.json has one, else the derived default), 'derived', 'baseline' or a string like "
    "'thread-map{elems-per-lane=4},vectorize{bits=128},lower-reduction,plan-smem,rows-in-flight{rows=4}'. "
    "Every pass and option: docs/pipeline.md."
)


class UserError(click.ClickException):
    """An error the user can fix: printed on one line, exit status 1, no traceback."""


ARCH_HELP = "GPU arch whose tuned schedule 'default' picks (sm90 = sm_90a)."


def _resolve(pipeline: str, module, arch: str) -> str:
    """resolve_pipeline, saying on stderr whether 'default' is a tuned or the derived schedule."""
    from compressc.cache.arch import normalize_arch
    from compressc.passes.manager import format_sibling, resolve_pipeline
    from compressc.passes.tuned import TunedFileError, describe, load_tuned, tuned_entry

    try:
        arch = normalize_arch(arch)
        table = load_tuned()
    except (ValueError, TunedFileError) as err:
        raise UserError(str(err)) from None
    if pipeline.strip() == "default" and module.attr("kernel") == "csa":
        click.echo("// pipeline 'default' = each part's own default, fused (docs/pipeline.md §9)", err=True)
    elif pipeline.strip() == "default":
        source = describe(tuned_entry(module.name, arch, table, format_sibling(module)), module.name, arch)
        click.echo(f"// pipeline 'default' = {source}", err=True)
    return resolve_pipeline(pipeline, module, arch, table)


def _read_cir(path: Path) -> str:
    """The text of a .cir file; a binary or non-UTF-8 file is one clear error, not a traceback."""
    data = path.read_bytes()
    hint = "give IR text as `compressc opt --spec ...` prints it"
    if b"\0" in data:
        raise UserError(f"{path}: not a .cir text file (NUL byte at offset {data.index(0)}): {hint}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not a .cir text file (byte 0x{data[err.start]:02x} at offset {err.start} "
            f"is not UTF-8): {hint}"
        ) from None


_spec_options = variant_options("Kernel of the family (docs/kernels.md §1).")


def _make_spec(kernel, head_size, quant_block, rope, weight_dtype, cache_format=None, rotate=False,
               state_layout=None, indexer=None, bounds=False):
    return variant_spec(kernel, head_size, quant_block, rope=rope, weight_dtype=weight_dtype,
                        cache_format=cache_format, rotate=rotate, state_layout=state_layout, indexer=indexer,
                        bounds=bounds)


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
    Inspect the set-up:
      compressc show-config                             versions, GPU, cache, variables, kernel packs
    \b
    Documentation (the repository's docs/ folder):
      docs/kernels.md        what the kernels compute, their inputs and the cache bytes
      docs/formats.md        cache bytes, IR text, pipeline strings, cache entries, packs
      docs/architecture.md   the stages from spec to launch, and where each lives
      docs/pipeline.md       every pass, its options and the schedules they make
    """


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@_spec_options
@click.option(
    "-p",
    "--pipeline",
    default=None,
    help=PIPELINE_HELP + " Without -p, FILE is only verified "
    "and re-printed; with --spec the default pipeline runs. -p '' runs no passes.",
)
@click.option(
    "--print-ir-after-all",
    is_flag=True,
    help="Print the input (the spec IR), then the module after every pass.",
)
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
    cache_format,
    rotate,
    state_layout,
    indexer,
    bounds,
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
         cluster-split=1|2|4|8,                    a cluster of CTAs pools one window, merged
                                                   over DSMEM (c128a_split: rank 0 stores the row)
         grid-split=0|1|2|4|8}                     c128a_split only: S CTAs of a plain launch
                                                   pool one window, merged through a global
                                                   workspace (0: 8)
      vectorize{bits=32|64|128}                    vector width of each global access
      lower-reduction{order=down|up}               shuffle trees + cross-warp exchanges
      plan-smem                                    shared-memory slots and barriers
      rows-in-flight{rows=N}                       window rows loaded before their updates
      page-lookup{by=auto|lane|row}                who reads the window rows' pages
      rescale{per=batch|row}                       online-softmax rescale per batch or row
      smem-stage                                   window staged in smem by cp.async (tiled)
      l2-prefetch                                  C128 window pages prefetched into L2
      operand-loads{at=early|late}                 RMS weight and cos/sin loaded early
      occupancy                                    .minnctapersm hint for an unrolled window
      cache-hints                                  read-once loads, L2-kept stores
      overlap-launch                               C128A store launched under compress
      lower-row                                    the row body as kd ops (run at the end)
      lower-grid                                   the row loop as kd ops (run at the end)
      window-prefetch{...}                         alias of the window passes (pipeline.md §6)
    """
    from compressc.ir import ParseError, parse_module, print_module
    from compressc.ir.from_spec import module_from_spec
    from compressc.ir.verifier import VerifyError
    from compressc.passes.manager import PassManager, PipelineError, parse_pipeline

    if (file is None) == (kernel is None):
        raise UserError("give exactly one of FILE or --spec (e.g. `compressc opt --spec c4a`)")
    try:
        if file is not None:
            module = parse_module(_read_cir(file), str(file))
        else:
            spec = _make_spec(kernel, head_size, quant_block, rope, weight_dtype, cache_format, rotate,
                              state_layout, indexer, bounds)
            module = module_from_spec(spec)
            pipeline = "default" if pipeline is None else pipeline  # -p '' is no passes
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
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@_spec_options
@click.option("-p", "--pipeline", default=None,
              help=PIPELINE_HELP + " Default with --spec: default; a FILE is emitted as it is.")
@click.option("--arch", default="sm90", show_default=True, help=ARCH_HELP)
def emit(file, kernel, head_size, quant_block, rope, weight_dtype, cache_format, rotate, state_layout,
         indexer, bounds, pipeline, arch):
    """Print the CuTe DSL kernel module generated for one variant, or for a saved stage.

    \b
    Examples:
      compressc emit --spec c4a --head-size 512 --quant-block 64
      compressc emit --spec indexer_fp8 -p baseline > indexer.py
      compressc opt --spec c4a > lowered.cir && compressc emit lowered.cir   (restart from text)
      compressc emit spec.cir -p derived          (a spec-level file through a pipeline)

    A FILE without -p must be lowered (`compressc opt` output, or a cache entry's
    lowered.cir); its row loop is lowered to the kernel dialect first if it is not yet.
    """
    from compressc.ir import ParseError, parse_module
    from compressc.ir.from_spec import module_from_spec
    from compressc.ir.verifier import VerifyError
    from compressc.kernels.emitter import emit as emit_source
    from compressc.passes.manager import PassManager, PipelineError, parse_pipeline, pipeline_string

    if (file is None) == (kernel is None):
        raise UserError("give exactly one of FILE or --spec (e.g. `compressc emit --spec c4a`)")
    try:
        if file is not None:
            module = parse_module(file.read_text(), str(file))
            label = f"restarted from {file.name}"
        else:
            spec = _make_spec(kernel, head_size, quant_block, rope, weight_dtype, cache_format, rotate,
                              state_layout, indexer, bounds)
            module = module_from_spec(spec)
            pipeline = pipeline or "default"
        if pipeline is not None:
            passes = parse_pipeline(_resolve(pipeline, module, arch))
            module, label = PassManager(passes).run(module), pipeline_string(passes)
        click.echo(emit_source(module, label), nl=False)
    except (ParseError, VerifyError, PipelineError) as err:
        raise UserError(str(err)) from None


from compressc.cli.build import build  # noqa: E402
from compressc.cli.cache import cache  # noqa: E402
from compressc.cli.config import show_config  # noqa: E402
from compressc.cli.packs import inspect_cmd, wheel  # noqa: E402
from compressc.cli.tune import tune  # noqa: E402
from compressc.config import ENV_TABLE  # noqa: E402

main.add_command(build)
main.add_command(wheel)
main.add_command(inspect_cmd)
main.add_command(cache)
main.add_command(tune)
main.add_command(show_config)
# the variables' one description (config.ENV_TABLE), so --help cannot drift from it
main.help = inspect.cleandoc(main.help or "") + "\n\n\b\nEnvironment (read once, at start-up):\n" + "\n".join(
    f"  {name:<24} {meaning}" for name, _, meaning in ENV_TABLE
)
