"""``adapt``: train, merge, extract, resize, inspect and apply LoRA-family adapters.

Exit status, for every command: 0 success; 1 the command ran and found a problem (``check``);
2 a usage or input error (one line on stderr, ``adapt: error: ...``); 130 interrupted (Ctrl-C);
143 terminated (SIGTERM). Start-up imports only click: each command imports torch and the
libraries it needs when it runs, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from types import FrameType

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local paths only
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no notices about unused image processors

import click

from adapt_cli.commands import COMMANDS
from adapters_core.errors import AdaptError
from adapters_core.quiet import set_verbosity

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(BaseException):
    """SIGTERM (job schedulers, ``docker stop``): unwinds like Ctrl-C so outputs are cleaned up."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="adapt")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the libraries' log lines, progress bars, warnings and tracebacks of internal errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
def cli(verbose: bool, quiet: bool) -> None:
    """Train, combine and apply LoRA-family adapters for Stable Diffusion (kohya-compatible)."""
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet exclude each other")
    set_verbosity("verbose" if verbose else "quiet" if quiet else "normal")


for command in COMMANDS:
    cli.add_command(command)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> None:
    click.echo(f"adapt: error: {_one_line(message)}", err=True)


def _internal_error(error: BaseException, argv: list[str] | None) -> int:
    """An exception no check foresaw: one line (the traceback with ``--verbose``)."""
    verbose = any(arg in ("-v", "--verbose") for arg in (argv if argv is not None else sys.argv[1:]))
    if verbose:
        traceback.print_exception(error)
    where = ""
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    _error(f"{type(error).__name__}: {error}{where}; rerun with --verbose for the traceback")
    return EXIT_USAGE


def _flag(error: click.BadParameter) -> str:
    """The flag a bad value was given for, in kohya's spelling (``--network_dim``)."""
    if error.param is not None:
        return error.param.opts[0] if error.param.opts else error.param.human_readable_name
    return str(error.param_hint or "value")


def _usage_error(error: click.UsageError) -> None:
    command = f"{error.ctx.command_path}: " if error.ctx is not None else ""
    hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
    _error(f"{command}{error.format_message()}{hint}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (see the module docstring)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (tests, embedding): leave signals alone
        previous = None
    try:
        result = cli.main(args=argv, prog_name="adapt", standalone_mode=False)
    except AdaptError as error:
        _error(str(error))
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("adapt: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.BadParameter as error:
        if isinstance(error, click.MissingParameter):  # no message of its own: click words it
            _usage_error(error)
        else:
            _error(f"{_flag(error)}: {error.message}")
        return EXIT_USAGE
    except click.UsageError as error:
        _usage_error(error)
        return EXIT_USAGE
    except click.ClickException as error:
        _error(error.format_message())
        return error.exit_code
    except click.exceptions.Exit as error:
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("adapt: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Terminated:
        click.echo("adapt: terminated", err=True)
        return EXIT_TERMINATED
    except MemoryError:
        _error("out of memory; try a smaller batch, --lowram options or a machine with more memory")
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        _error(f"{where}{error.strerror or error}")
        return EXIT_USAGE
    except Exception as error:  # noqa: BLE001 - the last line of defence against a traceback
        return _internal_error(error, argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return result if isinstance(result, int) else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
