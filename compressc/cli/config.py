"""`compressc show-config`: what a bug report needs, in one command."""

from __future__ import annotations

import json

import click


@click.command("show-config")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def show_config(as_json: bool) -> None:
    """Print versions, the GPU, the cache, COMPRESSC_* variables and installed kernel packs.

    Versions of compressc, Python, torch, nvidia-cutlass-dsl (and the flavour of its
    libraries: builds need cu13), nvidia-nvjitlink and cuda-bindings; the first CUDA
    device and the arch kernels are built for on it; the cache directory and whether it
    is writable; the COMPRESSC_* variables set now; each installed kernel pack and
    whether this compressc and this GPU can use it. Paste it into bug reports.

    \b
    Examples:
      compressc show-config
      compressc show-config --json | python -m json.tool
    """
    from compressc.show_config import report

    doc = report()
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    for line in format_report(doc):
        click.echo(line)


def format_report(doc: dict) -> list[str]:
    """The report as `=== section ===` blocks of `name: value` lines."""
    lines: list[str] = []
    for section in ("versions", "gpu", "cache", "package"):
        lines += _section(section, doc[section])
    lines += _section("environment (set now)", doc["environment"])
    lines += [f"warning: {n} is not a variable compressc reads (see below)" for n in doc["unknown_variables"]]
    lines += ["", "=== kernel packs ==="]
    lines += [_pack_line(p) for p in doc["packs"]] or ["(none installed)"]
    lines += ["", "=== variables ==="]
    lines += [f"{v['name']:<24} {v['meaning']} (default: {v['default']})" for v in doc["variables"]]
    return lines


def _section(title: str, values: dict) -> list[str]:
    if not values:
        return ["", f"=== {title} ===", "(none set)"]
    width = max((len(k) for k in values), default=0) + 1
    return ["", f"=== {title} ==="] + [f"{k + ':':<{width}} {v}".rstrip() for k, v in values.items()]


def _pack_line(pack: dict) -> str:
    if "root" not in pack:
        return f"{pack['entry_point']}: NOT USABLE: {pack['problem']}"
    state = "OK" if pack["matches"] else f"NOT USABLE: {pack['problem']}"
    archs = ", ".join(pack["archs"])
    return (
        f"{pack['name']} {pack['compressc_version']} ({archs}; {pack['kernels']} kernels) "
        f"{pack['root']}: {state}"
    )
