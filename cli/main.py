"""``adapt``: train, merge, extract, resize, inspect and apply LoRA-family adapters."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local paths only
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no notices about unused image processors

import click

from adapt_cli.commands import COMMANDS
from adapters_core.errors import AdaptError
from adapters_core.quiet import set_verbosity


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="adapt")
@click.option("-v", "--verbose", is_flag=True, help="Also show the libraries' log lines, progress bars and warnings.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
def cli(verbose: bool, quiet: bool) -> None:
    """Train, combine and apply LoRA-family adapters for Stable Diffusion (kohya-compatible)."""
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet exclude each other")
    set_verbosity("verbose" if verbose else "quiet" if quiet else "normal")


for command in COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; an :class:`AdaptError` becomes one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="adapt", standalone_mode=False)
    except AdaptError as exc:
        click.echo(f"adapt: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("adapt: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
