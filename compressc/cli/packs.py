"""`compressc inspect` and `compressc wheel`: the installed kernel packs and the kernel wheel."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

from compressc.cli.build import (
    _archs,
    _check_build_extra,
    _run_with_progress,
    _specs,
    jobs_option,
)
from compressc.cli.cache import (
    SIZE,
    _cache_dir_option,
    _cache_root,
    _console,
    _indexed,
)
from compressc.cli.options import archs_option, variant_options
from compressc.cli.output import echo_json, json_option


@click.command()
@archs_option("GPU arch of the pack (sm90, sm100, ...). Repeatable: one wheel for all.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Directory the wheel is written to.",
)
@click.option(
    "--max-size",
    type=SIZE,
    default="50MB",
    show_default=True,
    help="Fail, writing nothing, if the wheel is larger (10MB, 1GiB, bytes).",
)
@jobs_option("Compiler processes for kernels the cache lacks (default: $COMPRESSC_JOBS or the cores).")
@variant_options("Pack one kernel instead of the default matrix.", matrix=True)
@_cache_dir_option
def wheel(archs, out, max_size, jobs, kernel, head_size, quant_block, weight_dtype, rope, cache_format,
          rotate, state_layout, indexer, bounds, cache_dir):
    """Write an installable kernel-pack wheel (compiling what the cache lacks).

    The wheel, e.g. compressc_kernels_sm90-<version>-py3-none-any.whl, depends only on
    this exact compressc version, serves x86-64 and aarch64 hosts, and is byte-for-byte
    reproducible (set SOURCE_DATE_EPOCH to stamp its files; default 1980-01-01).
    What a pack holds: docs/formats.md §5.

    \b
    Examples:
      compressc wheel --arch sm90
      compressc wheel --arch sm90 --arch sm100 --out dist/ --max-size 50MB
      pip install dist/compressc_kernels_sm90-*.whl && compressc inspect
    """
    from compressc.cache.store import Entry, Store
    from compressc.config import Config, ConfigError
    from compressc.driver.plan import plan_many
    from compressc.packs.wheel import WheelError, format_size, write_wheel, zip_time

    specs = _specs(kernel, head_size, quant_block, weight_dtype, rope, cache_format, rotate, state_layout,
                   indexer, bounds)
    archs = _archs(archs)
    try:
        date_time = zip_time(os.environ.get("SOURCE_DATE_EPOCH"))
        workers = jobs or Config.from_env().jobs
    except (WheelError, ConfigError) as err:
        raise click.ClickException(str(err)) from None
    _check_build_extra()
    store = Store(_cache_root(cache_dir))
    try:
        plans = plan_many(specs, archs)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    results, built, _ = _run_with_progress(plans, store, workers)
    failed = [f"{p.label}: {results.get(p.key)}" for p in plans if not isinstance(results.get(p.key), Entry)]
    if failed:
        raise click.ClickException(
            f"{len(failed)} kernel(s) failed to build, no wheel written: " + "; ".join(failed)
        )
    try:
        info = write_wheel(
            [results[p.key] for p in plans], archs, out, max_size=max_size, date_time=date_time
        )
    except WheelError as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"{info.path}  {format_size(info.size)}  ({info.kernels} kernels for {', '.join(archs)}, "
        f"{len(built)} compiled now)"
    )


# -- compressc inspect --------------------------------------------------------------------
@click.command("inspect")
@click.option("--arch", default=None, help="Only kernels for this arch (sm90, sm_90a, ...).")
@_cache_dir_option
@json_option
def inspect_cmd(arch, cache_dir, as_json):
    """List every kernel from the installed packs and the cache.

    'used' marks the entry the runtime would load for each variant@arch: installed
    packs first, then the cache ($COMPRESSC_CACHE_DIR, default $XDG_CACHE_HOME/compressc
    or ~/.cache/compressc).
    Each row shows the arch, the source (pack or cache path) and the cubin sha256.
    Exits 1 when an entry is bad (see `compressc cache verify`).

    \b
    Examples:
      compressc inspect
      compressc inspect --arch sm90
      COMPRESSC_CACHE_DIR=build/kernels compressc inspect
      compressc inspect --json | jq '.kernels[] | select(.used) | .source'
    """
    from compressc.cache.repair import deep_problems
    from compressc.cache.store import Store
    from compressc.runtime.resolve import iter_pack_roots, open_store

    wanted = _archs((arch,))[0] if arch else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stores = [open_store(root) for root in iter_pack_roots()]
    root = _cache_root(cache_dir)
    if not root.is_dir():
        _no_cache(root, stores)
    sources = [(getattr(s, "label", str(s.root)), s) for s in stores] + [(f"cache {root}", Store(root, True))]
    rows, used, problems = [], set(), [str(w.message) for w in caught]
    for label, store in sources:
        for entry in store.entries():
            m = entry.manifest
            if wanted and m["arch"] != wanted:
                continue
            chosen = (m["variant"], m["arch"]) not in used and _indexed(store, m, problems) == entry.key
            used |= {(m["variant"], m["arch"])} if chosen else set()
            rows.append(_kernel_row(entry, label, chosen))
        problems += [f"{label}: {path}: {problem}" for path, problem in deep_problems(store)]
    rows.sort(key=lambda r: (r["variant"], r["arch"]))
    problems = list(dict.fromkeys(problems))
    if as_json:
        echo_json({"kernels": rows, "packs": len(stores), "cache": str(root), "warnings": problems})
    else:
        _print_kernels(rows, len(stores))
    for problem in problems:
        click.echo(f"warning {problem}", err=True)
    if problems:  # a tampered or inconsistent kernel must not look fine to a script
        raise click.ClickException(
            f"{len(problems)} problem(s) above: `compressc cache verify --repair` fixes the "
            "cache; reinstall a pack that is reported"
        )


def _kernel_row(entry, source: str, used: bool) -> dict:
    m = entry.manifest
    return {
        "variant": m["variant"],
        "arch": m["arch"],
        "source": source,
        "path": str(entry.path),
        "key": entry.key,
        "cubin_sha256": m["cubin_sha256"],
        "registers": m["registers"],
        "smem": m["smem_static"] + m["smem_dynamic"],
        "used": used,
    }


def _print_kernels(rows: list[dict], packs: int) -> None:
    from rich.table import Table

    table = Table(title="compressc kernels (packs, then the user cache)", title_justify="left")
    for col in ("variant", "arch", "source", "key", "cubin sha256", "regs", "smem", "used"):
        table.add_column(col, justify="right" if col in ("regs", "smem") else "left", no_wrap=col != "source")
    for r in rows:
        table.add_row(r["variant"], r["arch"], r["source"], r["key"][:12], r["cubin_sha256"][:12],
                      str(r["registers"]), str(r["smem"]), "*" if r["used"] else "")
    console = _console()
    console.print(table)
    console.print(f"{len(rows)} kernels from {packs} pack(s) and the cache")


def _no_cache(root: Path, stores: list) -> None:
    """A missing cache is a note when packs supply kernels, else the error that nothing can."""
    if not stores:
        raise click.ClickException(
            f"no kernels to list: no kernel pack is installed and the cache {root} does not exist; "
            "build with `compressc build`, or name the cache with --cache-dir or COMPRESSC_CACHE_DIR"
        )
    click.echo(f"note: the cache {root} does not exist; listing the installed packs only", err=True)
