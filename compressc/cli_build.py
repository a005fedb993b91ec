"""`compressc build`: the main job: the default matrix to cubins, with progress."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from compressc.specs.errors import SpecError
from compressc.specs.family import KERNELS, make_spec
from compressc.specs.matrix import default_specs

BUILD_EXTRA_HINT = "pip install 'compressc[build]'  (nvidia-cutlass-dsl[cu13]==4.8.1 and nvidia-nvjitlink)"


# The kernels quantise with cvt.rn.satfinite.e4m3x2.f32, which PTX has from sm_89 on.
MIN_SM = 89


def _archs(values: tuple[str, ...]) -> list[str]:
    from compressc.cache.arch import normalize_arch, sm_number

    try:
        archs = list(dict.fromkeys(normalize_arch(v) for v in values))
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    for arch in archs:
        if sm_number(arch) < MIN_SM:
            raise click.ClickException(
                f"{arch} cannot run compressc kernels: their FP8 conversions (cvt.rn.satfinite.e4m3x2.f32) "
                f"need sm_{MIN_SM} or later; build for sm90 (Hopper) or sm100 (Blackwell)"
            )
    return archs


def _specs(kernel, head_size, quant_block, weight_dtype):
    if kernel is None:
        given = [
            f"--{n}"
            for n, v in (
                ("head-size", head_size),
                ("quant-block", quant_block),
                ("weight-dtype", weight_dtype),
            )
            if v is not None
        ]
        if given:
            raise click.ClickException(
                f"{' and '.join(given)} needs --spec (without it the default matrix "
                "is built), e.g. --spec c4a --head-size 512 --quant-block 64"
            )
        return default_specs()
    try:
        dtypes = [weight_dtype] if weight_dtype else ["bf16", "f32"]
        return [make_spec(kernel, head_size, quant_block, weight_dtype=d) for d in dtypes]
    except SpecError as err:
        raise click.ClickException(str(err)) from None


def _check_build_extra() -> None:
    """One line naming the pip command when the build toolchain (the `build` extra) is missing."""
    import importlib.util

    from compressc.cache.compile import ToolchainError, toolchain_fingerprint

    for module in ("cutlass", "cuda.bindings.nvjitlink"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise click.ClickException(
                f"building kernels needs {module!r}, which is not installed: {BUILD_EXTRA_HINT}"
            )
    try:
        toolchain_fingerprint()  # the wheels whose versions go into every key (nvidia-nvjitlink, ...)
    except ToolchainError as err:
        raise click.ClickException(f"{err} (the build extra: {BUILD_EXTRA_HINT})") from None


def _config():
    from compressc.config import Config, ConfigError

    try:
        return Config.from_env()
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


def console():
    """stdout console; when piped, wide enough that variant names and commands stay whole."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _reproduce(p, pipeline: str = "default", out: Path | None = None) -> str:
    """The command that builds only `p`'s variant, with the same pipeline and output directory."""
    import shlex

    s = p.spec
    cmd = (
        f"compressc build --arch {p.arch} --spec {s.kernel} --head-size {s.head} "
        f"--quant-block {s.quant_block} --weight-dtype {s.weight_dtype} -j 1"
    )
    cmd += f" -p {shlex.quote(pipeline)}" if pipeline != "default" else ""
    return cmd + (f" --out {shlex.quote(str(out))}" if out is not None else "")


def jobs_option(help_text: str):
    """-j/--jobs, compile processes (None: $COMPRESSC_JOBS or the cores), for build, wheel, tune."""
    return click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None, help=help_text)


def variant_options(spec_help: str):
    """--spec, --head-size, --quant-block and --weight-dtype: one variant instead of the matrix."""

    def decorate(command):
        # applied bottom-up, so --help lists them in the order written here
        command = click.option(
            "--weight-dtype",
            type=click.Choice(["bf16", "f32"]),
            default=None,
            help="With --spec: rms_norm_weight dtype (default: both).",
        )(command)
        command = click.option(
            "--quant-block", type=int, default=None, help="With --spec: channels per quant scale."
        )(command)
        command = click.option(
            "--head-size", type=int, default=None, help="With --spec: channels per token."
        )(command)
        return click.option("--spec", "kernel", type=click.Choice(KERNELS), default=None, help=spec_help)(
            command
        )

    return decorate


@click.command()
@click.option(
    "--arch",
    "archs",
    multiple=True,
    default=("sm90",),
    show_default=True,
    help="GPU arch: sm90, sm_90, sm_90a, 90a (all mean sm_90a), sm100 ... Repeatable.",
)
@variant_options("Build one kernel instead of the default matrix.")
@click.option("-p", "--pipeline", default="default", show_default=True, help="Pass pipeline or 'baseline'.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Kernel directory to fill (default: the user cache, $COMPRESSC_CACHE_DIR or ~/.cache/compressc).",
)
@jobs_option("Compiler worker processes (default: $COMPRESSC_JOBS or the number of cores).")
def build(archs, kernel, head_size, quant_block, weight_dtype, pipeline, out, jobs):
    """Compile kernels ahead of time into the cache (or --out DIR).

    Builds the default variant matrix (SPEC.md §1 rows, both weight dtypes) for each
    --arch. Nothing needs a GPU. A second run with nothing changed compiles nothing.

    \b
    Examples:
      compressc build --arch sm90
      compressc build --arch sm90 --arch sm100 -j 2 --out build/kernels
      compressc build --arch sm90 --spec c4a --head-size 512 --quant-block 64
    """
    config = _config()
    archs = _archs(archs)
    specs = _specs(kernel, head_size, quant_block, weight_dtype)
    _check_build_extra()
    from compressc.cache.build import plan_many
    from compressc.cache.store import Store

    store = Store(out or config.cache_dir, lock_timeout=config.lock_timeout)
    try:
        plans = plan_many(specs, archs, pipeline)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    workers = jobs or config.jobs or os.cpu_count() or 1
    started = time.perf_counter()
    results, built, restored = _run_with_progress(plans, store, workers)
    _summary(
        plans, results, built | restored, store, time.perf_counter() - started,
        lambda p: _reproduce(p, pipeline, out),
    )


def _run_with_progress(plans, store, workers):
    """Build the plans with one progress bar per kernel; returns (results, {key: "built"|"rebuilt"},
    {key: "restored"}).

    "rebuilt" means the store held a corrupt or tampered entry under that key: it was a
    miss, was compiled again and replaced (the store also logs what was wrong with it).
    "restored" means the entry was cached but its variant's index named another build
    (or none: a kill between publish and index write), and now names it again.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from compressc.cache.build import build_plans

    problems = {p.key: store.problem(p.key) for p in plans}
    missing = [p.label for p in plans if problems[p.key]]
    if store.readonly and missing:
        raise click.ClickException(
            f"{store.root} is read-only and lacks {len(missing)} kernel(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): build into a writable directory with --out DIR "
            "or COMPRESSC_CACHE_DIR"
        )
    corrupt = {key for key, problem in problems.items() if problem and not problem.startswith("missing")}
    unindexed = set() if store.readonly else {  # cached default builds the index does not name
        p.key for p in plans
        if p.serves and not problems[p.key] and store.indexed_key(p.spec.variant, p.arch) != p.key
    }
    compiled: dict[str, str] = {}
    restored: dict[str, str] = {}  # not compiled: shown in the summary only
    with Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=24),
        TimeElapsedColumn(),
        console=console(),
        transient=False,
    ) as progress:
        overall = progress.add_task("all kernels", total=len(plans), status=f"0/{len(plans)}")
        tasks = {p.key: progress.add_task(f"  {p.label}:", total=None, status="waiting") for p in plans}

        def on_done(p, outcome, was_compiled):
            status = "cached"
            if isinstance(outcome, BaseException):
                status = "failed"
            elif was_compiled:
                status = compiled[p.key] = "rebuilt (corrupt entry replaced)" if p.key in corrupt else "built"
            elif p.key in unindexed:
                status = restored[p.key] = "restored (index repointed)"
            progress.update(tasks[p.key], total=1, completed=1, status=status)
            progress.advance(overall)
            done = progress.tasks[overall].completed
            progress.update(overall, status=f"{done:g}/{len(plans)}")

        results = build_plans(plans, store, workers, on_done)
    return results, compiled, restored


def _summary(plans, results, built, store, seconds, reproduce=_reproduce) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"compressc build -> {store.root}", title_justify="left")
    for col in ("variant", "arch", "regs", "smem", "spills", "compile s", "status"):
        table.add_column(
            col, justify="right" if col in ("regs", "smem", "spills", "compile s") else "left", no_wrap=True
        )
    failures = []
    for p in plans:
        outcome = results.get(p.key)
        if isinstance(outcome, BaseException) or outcome is None:
            failures.append((p, outcome))
            table.add_row(p.spec.variant, p.arch, "-", "-", "-", "-", "[red]FAILED")
            continue
        m = outcome.manifest
        status = built.get(p.key, "cached").split(" ")[0]
        table.add_row(
            p.spec.variant,
            p.arch,
            str(m["registers"]),
            str(m["smem_static"] + m["smem_dynamic"]),
            str(m["spill_stores"] + m["spill_loads"]),
            f"{m['compile_seconds']:.2f}",
            status,
        )
    out = console()
    out.print(table)
    out.print(f"{len(plans) - len(failures)}/{len(plans)} kernels ready in {seconds:.1f} s")
    for p, err in failures:
        out.print("[red]error[/red] " + escape(f"{p.label}: {err}"), soft_wrap=True)
        out.print(f"  reproduce: {reproduce(p)}", markup=False, soft_wrap=True)
    if failures:
        raise SystemExit(1)
