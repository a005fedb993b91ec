"""`compressc build`: the main job: the default matrix to cubins, with progress."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from compressc.cli.options import DEFAULT_ROPE, archs_option, variant_options, variant_spec
from compressc.cli.output import echo_json, json_option
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


def _specs(kernel, head_size, quant_block, weight_dtype, rope=None, cache_format=None, rotate=None,
           state_layout=None, indexer=None, bounds=False):
    """The specs build and wheel make: the default matrix (its checked builds with --bounds), or
    --spec's variant, one per weight dtype unless --weight-dtype is given."""
    if kernel is None:
        _no_axes_without_spec(head_size=head_size, quant_block=quant_block, weight_dtype=weight_dtype,
                              rope=rope, cache_format=cache_format, rotate=rotate, state_layout=state_layout,
                              indexer=indexer)
        return checked_default_specs() if bounds else default_specs()
    dtypes = [weight_dtype] if weight_dtype else ["bf16", "f32"]
    rope = DEFAULT_ROPE if rope is None else rope
    # one variant per weight dtype: the kernel's first format, unrotated, paged, unless given
    return [variant_spec(kernel, head_size, quant_block, rope=rope, weight_dtype=d, cache_format=cache_format,
                         rotate=bool(rotate), state_layout=state_layout, indexer=indexer, bounds=bounds)
            for d in dtypes]


def _no_axes_without_spec(**axes) -> None:
    given = [f"--{name.replace('_', '-')}" for name, value in axes.items() if value is not None]
    if given:
        raise click.ClickException(
            f"{' and '.join(given)} needs --spec (without it the default matrix "
            "is built), e.g. --spec c4a --head-size 512 --quant-block 64"
        )


def checked_default_specs() -> list:
    """The checked build (KernelSpec.bounds) of every default variant that has one."""
    from compressc.specs.family import CHECKED_KERNELS, validate

    specs = [s.with_(bounds=True) for s in default_specs()
             if s.kernel in CHECKED_KERNELS and s.state_layout == "paged"]
    for spec in specs:
        validate(spec)
    return specs


def _check_build_extra() -> None:
    """One line naming the pip command when the build toolchain (the `build` extra) is missing."""
    import importlib.util

    from compressc.driver.compile import ToolchainError, toolchain_fingerprint

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


def console(stderr: bool = False):
    """stdout (or stderr) console; when piped, wide enough that variant names and commands stay whole."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(width=None if stream.isatty() else 200, highlight=False, stderr=stderr)


def _reproduce(p, pipeline: str = "default", out: Path | None = None) -> str:
    """The command that builds only `p`'s variant, with the same pipeline and output directory."""
    import shlex

    from compressc.runtime.resolve import build_command

    cmd = build_command(p.spec, p.arch) + " -j 1"  # the runtime's hint, so the two cannot differ
    cmd += f" -p {shlex.quote(pipeline)}" if pipeline != "default" else ""
    return cmd + (f" --out {shlex.quote(str(out))}" if out is not None else "")


def jobs_option(help_text: str):
    """-j/--jobs, compile processes (None: $COMPRESSC_JOBS or the cores), for build, wheel, tune."""
    return click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None, help=help_text)


@click.command()
@archs_option("GPU arch: sm90, sm_90, sm_90a, 90a (all mean sm_90a), sm100 ... Repeatable.")
@variant_options("Build one kernel instead of the default matrix.", matrix=True)
@click.option("-p", "--pipeline", default="default", show_default=True, help="Pass pipeline or 'baseline'.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Kernel directory to fill (default: the user cache, $COMPRESSC_CACHE_DIR, else "
    "$XDG_CACHE_HOME/compressc or ~/.cache/compressc).",
)
@jobs_option("Compiler worker processes (default: $COMPRESSC_JOBS or the number of cores).")
@json_option
def build(archs, kernel, head_size, quant_block, weight_dtype, rope, cache_format, rotate, state_layout,
          indexer, bounds, pipeline, out, jobs, as_json):
    """Compile kernels ahead of time into the cache (or --out DIR).

    Builds the default variant matrix (docs/kernels.md §1 rows, both weight dtypes) for each
    --arch. Nothing needs a GPU. A second run with nothing changed compiles nothing.

    \b
    Examples:
      compressc build --arch sm90
      compressc build --arch sm90 --arch sm100 -j 2 --out build/kernels
      compressc build --arch sm90 --spec c4a --head-size 512 --quant-block 64
      compressc build --arch sm90 --bounds       (the checked builds: COMPRESSC_CHECK_BOUNDS=kernel)
      compressc build --arch sm90 --json > build.json     (progress on stderr)
    """
    config = _config()
    archs = _archs(archs)
    specs = _specs(kernel, head_size, quant_block, weight_dtype, rope, cache_format, rotate, state_layout,
                   indexer, bounds)
    _check_build_extra()
    from compressc.cache.store import Store
    from compressc.driver.plan import plan_many

    store = Store(out or config.cache_dir, lock_timeout=config.lock_timeout)
    try:
        plans = plan_many(specs, archs, pipeline)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    workers = jobs or config.jobs or os.cpu_count() or 1
    started = time.perf_counter()
    results, built, restored = _run_with_progress(plans, store, workers, progress_to_stderr=as_json)
    rows = summary_rows(plans, results, built | restored, lambda p: _reproduce(p, pipeline, out))
    seconds = time.perf_counter() - started
    if as_json:
        echo_json({"out": str(store.root), "seconds": round(seconds, 3), "kernels": rows})
    else:
        _summary(rows, store, seconds)
    _report_failures(rows)


def unwritable(root: Path) -> str | None:
    """Why kernels cannot be written under `root` ("not writable (...)"), None if they can.

    Checked before compiling anything: a cache under /proc or a read-only mount used to
    fail only when the first finished kernel was published. Creates `root` if missing,
    as the build would.
    """
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        return f"not writable ({err.strerror or err})"
    return None


def _run_with_progress(plans, store, workers, progress_to_stderr: bool = False):
    """Build the plans with one progress bar per kernel; returns (results, {key: "built"|"rebuilt"},
    {key: "restored"}).

    "rebuilt" means the store held a corrupt or tampered entry under that key: it was a
    miss, was compiled again and replaced (the store also logs what was wrong with it).
    "restored" means the entry was cached but its variant's index named another build
    (or none: a kill between publish and index write), and now names it again.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from compressc.driver.build import build_plans

    problems = {p.key: store.problem(p.key) for p in plans}
    missing = [p.label for p in plans if problems[p.key]]
    why = unwritable(store.root) if missing else None
    if (store.readonly or why) and missing:
        listed = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise click.ClickException(
            f"{store.root} is {why or 'read-only'} and lacks {len(missing)} kernel(s) ({listed}): "
            "build into a writable directory with --out DIR "
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
        console=console(stderr=progress_to_stderr),
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


def summary_rows(plans, results, built, reproduce=_reproduce) -> list[dict]:
    """One record per planned kernel: what the table and `build --json` show."""
    rows = []
    for p in plans:
        outcome = results.get(p.key)
        row = {"variant": p.spec.variant, "arch": p.arch, "key": p.key}
        if isinstance(outcome, BaseException) or outcome is None:
            rows.append(row | {"status": "failed", "error": str(outcome), "reproduce": reproduce(p)})
            continue
        m = outcome.manifest
        rows.append(row | {
            "status": built.get(p.key, "cached").split(" ")[0],
            "path": str(outcome.path),
            "registers": m["registers"],
            "smem": m["smem_static"] + m["smem_dynamic"],
            "spills": m["spill_stores"] + m["spill_loads"],
            "compile_seconds": m["compile_seconds"],
        })
    return rows


def _summary(rows: list[dict], store, seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"compressc build -> {store.root}", title_justify="left")
    for col in ("variant", "arch", "regs", "smem", "spills", "compile s", "status"):
        table.add_column(
            col, justify="right" if col in ("regs", "smem", "spills", "compile s") else "left", no_wrap=True
        )
    for r in rows:
        if r["status"] == "failed":
            table.add_row(r["variant"], r["arch"], "-", "-", "-", "-", "[red]FAILED")
            continue
        table.add_row(r["variant"], r["arch"], str(r["registers"]), str(r["smem"]), str(r["spills"]),
                      f"{r['compile_seconds']:.2f}", r["status"])
    out = console()
    out.print(table)
    ready = sum(r["status"] != "failed" for r in rows)
    out.print(f"{ready}/{len(rows)} kernels ready in {seconds:.1f} s")


def _report_failures(rows: list[dict]) -> None:
    """Each failed variant and the command that rebuilds only it, on stderr; then exit 1."""
    from rich.markup import escape

    failures = [r for r in rows if r["status"] == "failed"]
    errors = console(stderr=True)
    for r in failures:
        label = f"{r['variant']}@{r['arch']}"
        errors.print("[red]error[/red] " + escape(f"{label}: {r['error']}"), soft_wrap=True)
        errors.print(f"  reproduce: {r['reproduce']}", markup=False, soft_wrap=True)
    if failures:
        raise SystemExit(1)
