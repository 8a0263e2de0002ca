"""``adapt inspect FILE``: type, base model, modules per block, ranks, alphas, delta norms, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import click

from adapt_cli.options import ADAPTER


@click.command("inspect")
@click.argument("file", type=ADAPTER)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@click.option("--no-norms", "no_norms", is_flag=True, help="Skip computing each module's delta norm.")
def inspect(file: Path, as_json: bool, no_norms: bool) -> None:
    """Describe an adapter file (any installed type)."""
    from adapters_core.ops.inspect import format_report, inspect_adapter

    report = inspect_adapter(file, norms=not no_norms)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report))
