"""`--json` for the listing and summary commands: one JSON document on stdout.

With --json, stdout holds exactly one JSON document (so `| jq` works); anything else a
command says (progress, notes, warnings) goes to stderr, and the exit status is the one
the text form has.
"""

from __future__ import annotations

import json
from typing import Any

import click


def json_option(fn):
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of a table."
    )(fn)


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))
