"""``adapt check``: which layer each key of an adapter applies to, and which keys load nowhere.

Exit status: 0 when every key loads; 1 when some key would load nowhere (after the report),
or, with ``--strict``, when diffusers would load the file wrongly; 2 for errors (unreadable
file, unknown model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from adapt_cli.options import ADAPTER

if TYPE_CHECKING:
    from adapters_core.ops.check import CheckReport


def _alpha(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _print_report(report: CheckReport, show_modules: bool) -> None:
    click.echo(f"{report.adapter}: {report.network_type or 'unknown type'} on {report.model}")
    if show_modules and report.matched:
        rows = [("module", "layer", "shape", "rank", "alpha")] + [
            (m.module, m.layer, "x".join(map(str, m.shape)), str(m.rank if m.rank is not None else "-"), _alpha(m.alpha))
            for m in report.matched
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            click.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    if report.unmatched:
        click.echo(f"\n{len(report.unmatched)} keys load nowhere:")
        grouped: dict[tuple[str, str], list[str]] = {}
        for miss in report.unmatched:
            module, _, suffix = miss.key.partition(".")
            grouped.setdefault((module, miss.reason), []).append(suffix)
        for (module, reason), suffixes in grouped.items():
            click.echo(f"  {module} [{', '.join(suffixes)}]: {reason}")
    click.echo("\nper block (modules matched / keys unmatched):")
    for label, counts in report.blocks().items():
        click.echo(f"  {label:<6} {counts['modules']:>4} / {counts['unmatched_keys']}")
    for issue in report.diffusers_issues:
        click.echo(f"\ndiffusers: {issue}")
    status = "OK" if report.ok else "MISMATCH"
    click.echo(
        f"\n{status}: {len(report.matched)} modules match, {len(report.unmatched)} keys load nowhere, "
        f"{len(report.diffusers_issues)} diffusers issues"
    )


@click.command("check")
@click.argument("adapter", type=ADAPTER)
@click.option(
    "--model",
    default=None,
    help="Base model: a Diffusers folder, a .safetensors/.ckpt checkpoint, or sd_v1, sd_v2, sd_v2_v, tiny "
    "(built without weights). Default: the base model the adapter's metadata names (SD 1.x if none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--summary", is_flag=True, help="Leave out the per-module table.")
@click.option("--strict", is_flag=True, help="Also exit 1 when diffusers would load the file wrongly.")
def check(adapter: Path, model: str | None, as_json: bool, summary: bool, strict: bool) -> None:
    """Show which layer of MODEL each module of ADAPTER applies to (rank, alpha, shape), list every
    key that would load nowhere with the reason, and why diffusers would misread the file.

    Exits 1 when some key loads nowhere (with --strict also on diffusers issues).
    """
    from adapters_core.ops.check import check_adapter

    report = check_adapter(adapter, model)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report, show_modules=not summary)
    if not report.ok or (strict and report.diffusers_issues):
        raise click.exceptions.Exit(1)
