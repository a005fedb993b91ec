"""`compressc wheel`, `compressc inspect` and `compressc cache ...`: packs and the user cache."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import click

from compressc.cli.build import (
    _archs,
)
from compressc.cli.options import SIZE, variant_options, variant_spec
from compressc.cli.output import echo_json, json_option


def _cache_dir_option(fn):
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Cache root (default: $COMPRESSC_CACHE_DIR, else $XDG_CACHE_HOME/compressc or "
        "~/.cache/compressc).",
    )(fn)


def _cache_root(cache_dir: Path | None) -> Path:
    from compressc.config import Config, ConfigError

    if cache_dir is not None:
        return cache_dir
    try:
        return Config.from_env().cache_dir
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


def _existing_cache(root: Path) -> Path:
    """`root` if it is a directory; else one error saying so (an empty listing would hide it)."""
    if root.is_dir():
        return root
    what = "is not a directory" if root.exists() else "does not exist"
    raise click.ClickException(
        f"no kernel cache at {root}: the path {what}; build into it with `compressc build`, "
        "or name an existing cache with --cache-dir or COMPRESSC_CACHE_DIR"
    )


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _when(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))


def _dir_size(path: Path) -> int:
    from compressc.cache.files import tree_size  # counts files a concurrent clear removes as 0

    return tree_size(path)


# -- compressc wheel ----------------------------------------------------------------------
def _indexed(store, manifest, problems: list[str]) -> str | None:
    """The key the runtime's lookup serves from `store` for the manifest's variant@arch."""
    from compressc.packs.installed import PackStore
    from compressc.packs.wanted import spec_of
    from compressc.runtime.resolve import StaleEntryError, served_entry

    spec = spec_of(manifest)
    try:
        if spec is None:
            return None
        entry = served_entry(store, spec, manifest["arch"], pack=isinstance(store, PackStore))
    except StaleEntryError:  # only other builds (older compressc, other pipeline): none is used
        return None
    except Exception as err:  # a tampered pack entry: reported below the table
        problems.append(str(err))
        return None
    return entry.key if entry else None


# -- compressc cache ----------------------------------------------------------------------


@click.group()
def cache():
    """Manage the user cache of compiled kernels.

    The cache is --cache-dir, else $COMPRESSC_CACHE_DIR, else $XDG_CACHE_HOME/compressc
    or ~/.cache/compressc.
    A corrupt or tampered entry is never loaded: it is a miss that the next build
    (or, unless COMPRESSC_NO_JIT=1, the runtime) rebuilds. The layout of an entry and
    its manifest: docs/formats.md §4.

    \b
      compressc cache ls                      entries: variant, arch, key, size, date
      compressc cache verify                  re-hash every entry; exit 1 naming bad ones
      compressc cache prune --max-size 1GiB   drop the oldest entries above a size
      compressc cache clear --yes             drop everything
      compressc cache why --spec c4a          the key's ingredients; on a miss, what changed
    """


@cache.command("ls")
@_cache_dir_option
@json_option
def cache_ls(cache_dir, as_json):
    """List cache entries ('index' marks the build the runtime loads).

    \b
    Examples:
      compressc cache ls
      compressc cache ls --cache-dir build/kernels
      compressc cache ls --json | jq -r '.entries[].key'
    """
    from compressc.cache.store import Store

    store = Store(_existing_cache(_cache_root(cache_dir)), readonly=True)
    entries = sorted(store.entries(), key=lambda e: (e.manifest["variant"], e.manifest["arch"], e.key))
    rows = [_entry_row(store, e) for e in entries]
    if as_json:
        echo_json({"root": str(store.root), "entries": rows, "bytes": sum(r["bytes"] for r in rows)})
        return
    _print_entries(store.root, rows)


def _entry_row(store, entry) -> dict:
    return {
        "variant": entry.manifest["variant"],
        "arch": entry.manifest["arch"],
        "key": entry.key,
        "path": str(entry.path),
        "bytes": _dir_size(entry.path),
        "modified": _when(entry.path / "manifest.json"),
        "indexed": _indexed(store, entry.manifest, []) == entry.key,
    }


def _print_entries(root: Path, rows: list[dict]) -> None:
    from rich.table import Table

    from compressc.packs.wheel import format_size

    table = Table(title=f"compressc cache {root}", title_justify="left")
    for col in ("variant", "arch", "key", "size", "modified", "index"):
        table.add_column(col, justify="right" if col == "size" else "left", no_wrap=True)
    for r in rows:
        table.add_row(r["variant"], r["arch"], r["key"], format_size(r["bytes"]), r["modified"],
                      "*" if r["indexed"] else "")
    console = _console()
    console.print(table)
    console.print(f"{len(rows)} entries, {format_size(sum(r['bytes'] for r in rows))}")


@cache.command("verify")
@click.option("--repair", is_flag=True, help="Fix what is found: drop bad entries and stale temps, re-index.")
@_cache_dir_option
@json_option
def cache_verify(repair, cache_dir, as_json):
    """Re-hash every entry; exit 1 naming each bad one (--repair: fix them).

    Checks each manifest, its sealed launch fields and key.json, each cubin's sha256
    and its .nv.info (entry, block, parameters) against the manifest, leftover temp
    dirs of interrupted builds and index files. Without --repair it changes nothing;
    --repair removes bad entries and stale temp dirs and points each variant's index
    at its default build (after a kill between publish and index write, say).

    \b
    Examples:
      compressc cache verify
      compressc cache verify --repair
      COMPRESSC_CACHE_DIR=build/kernels compressc cache verify
      compressc cache verify --json     (exit status as without it)
    """
    from compressc.cache.repair import deep_problems
    from compressc.cache.store import Store

    store = Store(_existing_cache(_cache_root(cache_dir)), readonly=not repair)
    if repair:
        _repair(store)
    problems = deep_problems(store)
    good = len(store.entries())
    if as_json:
        bad = [{"path": str(path), "problem": problem} for path, problem in problems]
        echo_json({"root": str(store.root), "good": good, "problems": bad, "ok": not problems})
    for path, problem in problems if not as_json else []:
        click.echo(f"bad {path}: {problem}", err=True)
    if problems:
        raise click.ClickException(
            f"{len(problems)} problem(s), {good} good entries in {store.root}: bad entries are misses that "
            "`compressc build` replaces; `compressc cache clear` drops everything"
        )
    if not as_json:
        click.echo(f"{good} entries OK in {store.root}")


def _repair(store) -> None:
    from compressc.cache.repair import repair
    from compressc.cache.store import StoreError
    from compressc.packs.wanted import is_default_build

    try:
        actions = repair(store, prefer=is_default_build)
    except StoreError as err:
        raise click.ClickException(str(err)) from None
    for action in actions:
        click.echo(f"repaired: {action}")


@cache.command("prune")
@click.option("--max-size", type=SIZE, required=True, help="Size to keep the cache under: 10MB, 1GiB, bytes.")
@_cache_dir_option
def cache_prune(max_size, cache_dir):
    """Delete the oldest entries to fit under --max-size.

    \b
    Examples:
      compressc cache prune --max-size 1GiB
      compressc cache prune --max-size 0      (same as clear, without asking)
    """
    from compressc.cache.store import Store, StoreError
    from compressc.packs.wheel import format_size

    store = Store(_cache_root(cache_dir))
    before = sum(_dir_size(e.path) for e in store.entries())
    try:
        removed = store.prune(max_size)
    except StoreError as err:
        raise click.ClickException(str(err)) from None
    after = sum(_dir_size(e.path) for e in store.entries())
    click.echo(
        f"removed {len(removed)} entries ({format_size(before - after)}); "
        f"{store.root} holds {format_size(after)} (limit {format_size(max_size)})"
    )


@cache.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_cache_dir_option
def cache_clear(yes, cache_dir):
    """Delete every entry and the index (asks first unless --yes).

    \b
    Example:
      compressc cache clear --yes
    """
    from compressc.cache.store import Store, StoreError
    from compressc.packs.wheel import format_size

    store = Store(_cache_root(cache_dir))
    entries = store.entries()
    size = sum(_dir_size(e.path) for e in entries)
    if not yes:
        click.confirm(f"delete {len(entries)} entries ({format_size(size)}) from {store.root}?", abort=True)
    try:
        store.clear()
    except StoreError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"cleared {store.root} ({len(entries)} entries, {format_size(size)})")


@cache.command("why")
@variant_options("Kernel of the family (docs/kernels.md §1).", required=True)
@click.option("--arch", default="sm90", show_default=True, help="GPU arch (sm90, sm_90a, ...).")
@click.option("-p", "--pipeline", default="default", show_default=True, help="Pass pipeline.")
@click.option("--full", is_flag=True, help="Also print the spec IR ingredient in full.")
@_cache_dir_option
def cache_why(kernel, head_size, quant_block, rope, weight_dtype, cache_format, rotate, state_layout, indexer,
              bounds, arch, pipeline, full, cache_dir):
    """Print a kernel's key ingredients; on a miss, what changed.

    The key is the sha256 of the spec IR, pipeline, arch, compile options, compressc
    version, a fingerprint of compressc's compiler sources and the toolchain versions.
    On a miss, the nearest entry of the same variant@arch is named with the
    ingredients that differ.

    \b
    Examples:
      compressc cache why --spec c4a
      compressc cache why --spec indexer_fp8 --weight-dtype f32 --arch sm100
    """
    from compressc.cache.store import Store
    from compressc.driver.key import hash_ingredients

    arch = _archs((arch,))[0]
    spec = variant_spec(kernel, head_size, quant_block, rope=rope, weight_dtype=weight_dtype,
                        cache_format=cache_format, rotate=rotate, state_layout=state_layout, indexer=indexer,
                        bounds=bounds)
    now = _ingredients(spec, arch, pipeline)
    key = hash_ingredients(now)
    store = Store(_cache_root(cache_dir), readonly=True)
    click.echo(
        f"key      {key}\nkernel   {spec.variant}@{arch}\ncache    {store.root}\n"
        "ingredients (the key is the sha256 of their canonical JSON):"
    )
    for name, value in now.items():
        click.echo(f"  {name:<19} {_show(value)}")
    if full:
        click.echo("spec_ir:\n" + now["spec_ir"])
    _explain(store, key, spec, arch, now)


def _ingredients(spec, arch, pipeline) -> dict:
    from compressc.driver.compile import ToolchainError
    from compressc.driver.plan import plan_ingredients

    try:
        return plan_ingredients(spec, arch, pipeline)
    except (ToolchainError, ValueError) as err:
        raise click.ClickException(str(err)) from None


def _show(value) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, str) and "\n" in value:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        return f"sha256 {digest}..., {len(value.splitlines())} lines (--full prints it)"
    return str(value)


def _explain(store, key: str, spec, arch: str, now: dict) -> None:
    from compressc.cache.why import describe_difference, nearest_entry
    from compressc.runtime.resolve import build_command

    entry = store.get(key)
    if entry is not None:
        click.echo(f"hit: {entry.path}")
        return
    if store.entry_path(key).is_dir():
        click.echo(
            f"miss: {store.entry_path(key)} exists but is corrupt or tampered with "
            "(`compressc cache verify` says why); a build replaces it"
        )
        return
    click.echo(f"miss: no entry {key[:16]}... in {store.root}")
    near = nearest_entry(store, spec.variant, arch, now)
    if near is None:
        click.echo(f"no entry of {spec.variant}@{arch} at all; build it with:\n  {build_command(spec, arch)}")
        return
    when = _when(near.entry.path / "manifest.json")
    click.echo(f"nearest entry of {spec.variant}@{arch}: {near.entry.key} ({when})")
    if not near.complete:
        click.echo(
            "  (built before entries recorded key.json: only its manifest's "
            + ", ".join(sorted(near.recorded))
            + " can be compared)"
        )
    if not near.differs:
        click.echo(
            "  no recorded ingredient differs: the difference is in one the entry does not record "
            "(spec_ir, options, source_fingerprint)"
        )
    for name in near.differs:
        for line in describe_difference(name, near.recorded[name], now[name]):
            click.echo(f"  differs: {line}" if not line.startswith("  ") else f"  {line}")
