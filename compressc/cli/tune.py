"""`compressc tune`: the schedule search, in three steps (compile here, measure on the GPU, apply)."""

from __future__ import annotations

from pathlib import Path

import click

from compressc.cli.build import jobs_option
from compressc.cli.output import echo_json, json_option
from compressc.specs.family import KERNELS
from compressc.specs.formats import FORMATS
from compressc.tune.candidates import MAX_CANDIDATES
from compressc.tune.cases import FAMILY_CASES, KINDS, T_LIST
from compressc.tune.measure import REPS

RESULTS_FILE = "tune_results.json"
# option -> the step it belongs to; giving it to another step is an error, not silently ignored
_STEP_OF = {
    "kernels": "prepare",
    "weight_dtype": "prepare",
    "cache_format": "prepare",
    "rotate": "prepare",
    "limit": "prepare",
    "jobs": "prepare",
    "out": "measure",
    "t_list": "measure",
    "scenarios": "measure",
    "reps": "measure",
    "data": "apply",
}


def _own_cases(family: str) -> str:
    return " ".join(f"{kind} {T}" for kind, T in FAMILY_CASES[family])


@click.command()
@click.option("--arch", default="sm90", show_default=True, help="--prepare: GPU arch to compile for.")
@click.option(
    "--prepare",
    "prepare_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Step 1 (build host): compile every candidate into DIR/store and write DIR/tune_plan.json.",
)
@click.option(
    "--measure",
    "measure_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Step 2 (GPU host, no cutlass needed): time DIR's candidates, write the results JSON.",
)
@click.option(
    "--apply",
    "results_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Step 3 (here): record the winners of RESULTS.json in compressc/passes/tuned.json.",
)
@click.option(
    "--spec",
    "kernels",
    multiple=True,
    type=click.Choice(KERNELS),
    help="--prepare: only these kernels of the default matrix (repeatable).",
)
@click.option(
    "--weight-dtype",
    type=click.Choice(["bf16", "f32"]),
    default=None,
    help="--prepare: only variants with this RMSNorm weight dtype.",
)
@click.option(
    "--cache-format",
    type=click.Choice(list(FORMATS)),
    default=None,
    help="--prepare: only variants writing this cache format.",
)
@click.option(
    "--rotate/--no-rotate",
    default=None,
    help="--prepare: only the rotated (or unrotated) indexer variants.",
)
@click.option(
    "--limit",
    type=click.IntRange(2, 64),
    default=MAX_CANDIDATES,
    show_default=True,
    help="--prepare: candidates per variant (the derived default and baseline come first).",
)
@jobs_option("--prepare: compiler processes (default: $COMPRESSC_JOBS or the number of cores).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"--measure: results file (default: DIR/{RESULTS_FILE}).",
)
@click.option(
    "--T",
    "t_list",
    type=click.IntRange(1, 1 << 20),
    multiple=True,
    help=f"--measure: launched rows per case (repeatable; default {', '.join(map(str, T_LIST))}; "
    f"c128a_split: {_own_cases('c128a_split')}).",
)
@click.option(
    "--scenario",
    "scenarios",
    type=click.Choice(KINDS),
    multiple=True,
    help="--measure: scenarios (repeatable; default both; with no --T, a filter of a family's own cases).",
)
@click.option(
    "--reps",
    type=click.IntRange(1, 100000),
    default=REPS,
    show_default=True,
    help="--measure: timed calls per candidate and case (the median is kept).",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="--apply: the tuned table to update (default: the package's compressc/passes/tuned.json).",
)
@json_option
@click.pass_context
def tune(ctx, arch, prepare_dir, measure_dir, results_file, as_json, **opts):
    """Search the legal schedules of the default variants and keep the fastest.

    Compiling needs nvidia-cutlass-dsl and measuring needs a GPU, so the search is three
    steps of this command (docs/pipeline.md §7). Candidates per variant (at most
    --limit): the derived default,
    the baseline, the current tuned entry, then rows-in-flight 1|2|4|8, one CTA per
    row, runs of half and twice the derived run, the run without its .minnctapersm
    occupancy hint, the tiled grid and its longer runs (fewer CTAs per SM), the window
    staged in smem at 8 and 4 elems per lane, thread-map elems-per-lane 2|4|8 x
    window-split 1|2|4 (window kernels only), and last (tiled window kernels: C128A
    compress) the window prefetched into L2 and clusters of 2|4|8 CTAs pooling one
    window; all with 128-bit vectors, only schedules the verifier accepts, and one per
    distinct lowered IR. Candidates that spill or use a stack fail to build and are
    listed as dropped.

    c128a_split (C128A in one launch) has its own candidates: grid-split 8|4 x
    elems-per-lane 4|2 x window-split 2|1|4, each with and without the occupancy hint,
    then cluster-split 8|4 (the row's CTAs one cluster, merged over DSMEM) with and
    without the hint, then at grid-split 8 and 4 the softmax rescaled row by row (with
    and without the hint), 4 rows in flight and the window prefetched into L2, and
    grid-split 2.

    \b
    Score: the geometric mean over the cases (prefill and decode at T = 32, 512, 1024,
    4096, 16384; C128A decode up to 4096; c128a_split at decode T = 1, 32 and prefill
    T = 128, 512) of the median event-timed µs. The winner is the
    lowest score among the candidates within 3% (or 0.25 µs) of the baseline schedule in
    every case.
    `-p default` then builds the winner of each (variant, arch); `-p derived` the
    un-tuned derived default; `-p baseline` the baseline schedule.

    \b
    Examples:
      compressc tune --arch sm90 --prepare build/tune                   (here: compile)
      PYTHONPATH=. python -m compressc.cli tune --measure build/tune    (GPU host, 1-2 min)
      compressc tune --apply build/tune/tune_results.json               (here: write tuned.json)
      compressc build --arch sm90                                       (now with the tuned schedules)
      compressc tune --apply build/tune/tune_results.json --json        (any step: JSON on stdout)
    """
    steps = {"prepare": prepare_dir, "measure": measure_dir, "apply": results_file}
    chosen = [name for name, value in steps.items() if value is not None]
    if len(chosen) != 1:
        raise click.ClickException("give exactly one of --prepare DIR, --measure DIR or --apply RESULTS.json")
    step = chosen[0]
    for name, owner in _STEP_OF.items():
        if owner != step and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            flag = next(p.opts[-1] for p in ctx.command.params if p.name == name)
            raise click.ClickException(f"{flag} belongs to --{owner}, not --{step}")
    if step == "prepare":
        _prepare(arch, prepare_dir, opts, as_json)
    elif step == "measure":
        _measure(measure_dir, opts, as_json)
    else:
        _apply(results_file, opts["data"], as_json)


def _prepare(arch: str, out_dir: Path, opts: dict, as_json: bool = False) -> None:
    import os

    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from compressc.cli.build import _archs, _check_build_extra, _config, console, unwritable
    from compressc.specs.matrix import default_specs
    from compressc.tune.measure import FAMILY
    from compressc.tune.prepare import PLAN_FILE, prepare

    (arch,) = _archs((arch,))
    untunable = sorted(set(opts["kernels"] or ()) - set(FAMILY))
    if untunable:
        raise click.ClickException(
            f"--spec {untunable[0]}: compressc tune measures the paged-state kernels "
            f"({', '.join(FAMILY)}) only; build {untunable[0]} with the derived schedule (-p default)")
    specs = [
        s
        for s in default_specs()
        if s.kernel in FAMILY and (not opts["kernels"] or s.kernel in opts["kernels"])
        and opts["weight_dtype"] in (None, s.weight_dtype)
        and opts["cache_format"] in (None, s.cache_format)
        and opts["rotate"] in (None, s.rotate)
    ]
    if not specs:
        raise click.ClickException("no default variant matches --spec/--weight-dtype")
    _check_build_extra()
    why = unwritable(out_dir)  # before compiling: the candidates are stored under DIR
    if why:
        raise click.ClickException(f"--prepare {out_dir} is {why}: give a writable directory")
    workers = opts["jobs"] or _config().jobs or os.cpu_count() or 1
    out = console(stderr=as_json)
    with Progress(
        TextColumn("building candidates"),
        BarColumn(bar_width=30),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=out,
    ) as progress:
        task = progress.add_task("", total=None)
        doc = prepare(
            specs,
            arch,
            out_dir,
            workers,
            lambda *_: progress.advance(task),
            opts["limit"],
            lambda n: progress.update(task, total=n),
        )
    if as_json:
        echo_json({"plan": str(out_dir / PLAN_FILE), "arch": arch, "variants": [
            {"variant": v["variant"], "candidates": len(v["candidates"]), "dropped": v["dropped"]}
            for v in doc["variants"]
        ]})
    for v in doc["variants"]:
        out.print(f"{v['variant']}@{arch}: {len(v['candidates'])} candidates, {len(v['dropped'])} dropped")
        for d in v["dropped"]:
            out.print(escape(f"  dropped {d['schedule']} {d['pipeline']}: {d['reason']}"), soft_wrap=True)
    out.print(f"wrote {out_dir / PLAN_FILE}; next, on the GPU host (carry {out_dir}):", soft_wrap=True)
    out.print(
        f"  PYTHONPATH=. python -m compressc.cli tune --measure {out_dir}", markup=False, soft_wrap=True
    )


def _measure(plan_dir: Path, opts: dict, as_json: bool = False) -> None:
    from compressc.cli.build import console
    from compressc.tune.measure import MeasureError, measure
    from compressc.tune.prepare import write_json

    out = console(stderr=as_json)
    try:
        doc = measure(
            plan_dir,
            kinds=opts["scenarios"] or KINDS,
            t_list=opts["t_list"] or None,
            reps=opts["reps"],
            log=lambda s: out.print(s, markup=False),
        )
    except MeasureError as err:
        raise click.ClickException(str(err)) from None
    path = opts["out"] or plan_dir / RESULTS_FILE
    write_json(path, doc)
    if as_json:
        echo_json(doc)  # the results file's document
    else:
        print_results(doc, out)
    out.print(f"wrote {path}; apply it on the build host with:", soft_wrap=True)
    out.print(f"  compressc tune --apply {path}", markup=False, soft_wrap=True)


def print_results(doc: dict, out) -> None:
    """One table per variant: candidates x cases (µs), score, the winner starred."""
    from rich.table import Table

    out.print(f"{doc['gpu']}, driver {doc['driver']}, {doc['date']}, median of {doc['reps']} calls")
    for v in doc["variants"]:
        cases = list(v["candidates"][0]["us"])
        table = Table(title=f"{v['variant']} @ {doc['arch']}", title_justify="left")
        for col in ("", "schedule", "origin", *cases, "score µs", "vs derived"):
            table.add_column(
                col, justify="left" if col in ("", "schedule", "origin") else "right", no_wrap=True
            )
        derived = v["winner"].get("derived_score_us")
        for c in v["candidates"]:
            star = "*" if c["pipeline"] == v["winner"]["pipeline"] else ""
            ratio = f"{derived / c['score_us']:.2f}x" if derived else "-"
            table.add_row(
                star,
                c["schedule"],
                c["origin"],
                *(f"{c['us'][k]:.2f}" for k in cases),
                f"{c['score_us']:.2f}",
                ratio,
                style="bold" if star else None,
            )
        out.print(table)
        out.print(f"  winner: {v['winner']['pipeline']}", markup=False, soft_wrap=True)


def _apply(results_file: Path, data: Path | None, as_json: bool = False) -> None:
    from compressc.cli.build import console
    from compressc.passes.tuned import TunedFileError
    from compressc.tune.apply import ApplyError, apply

    try:
        path, arch, wins = apply(results_file, data)
    except (ApplyError, TunedFileError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        echo_json({"tuned": str(path), "arch": arch, "winners": wins})
        return
    out = console()
    for variant, entry in wins.items():
        derived = entry.get("derived_score_us")
        gain = f" ({derived / entry['score_us']:.2f}x vs derived)" if derived else ""
        out.print(
            f"{variant}@{arch}: {entry['score_us']:.2f} us{gain}: {entry['pipeline']}",
            markup=False,
            soft_wrap=True,
        )
    out.print(
        f"wrote {len(wins)} entries to {path}; `compressc build --arch {arch}` now uses them", soft_wrap=True
    )
