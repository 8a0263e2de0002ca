"""``adapt train``: kohya's ``train_network.py`` as a command.

Every flag of :class:`adapters_core.train.args.TrainArgs` is accepted in kohya's spelling
(``--network_dim``) and click's (``--network-dim``). kohya's multi-value flags take several
values after one flag (``--network_args conv_dim=4 conv_alpha=1``) or the flag repeated.
``--config_file`` reads a toml of the same arguments; flags on the command line win.
Ctrl-C finishes the current step, saves ``<name>-interrupted.<ext>`` (``last-interrupted``
without ``--output_name``) and a resumable ``<name>-stepNNNNNNNN-state`` folder, and exits with
status 130; a second Ctrl-C aborts at once.

Several GPUs: ``accelerate launch -m adapt_cli.main train <flags>`` (only the main process writes
files; each process draws its own noise, DyLoRA's rank units are shared).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from adapt_cli.options import expand_multi_value, kohya_option
from adapters_core.errors import ConfigError
from adapters_core.train.args import (
    RANGES,
    TrainArgs,
    field_defaults,
    field_specs,
)
from adapters_core.train.config_file import COMMAND_LINE, coerce, load_config_file, write_config_file
from adapters_core.train.unsupported_flags import IGNORED_FLAGS, UNSUPPORTED

F = Callable[..., Any]


def _spellings(name: str) -> tuple[str, ...]:
    kohya = f"--{name}"
    dashed = "--" + name.replace("_", "-")
    return (kohya,) if dashed == kohya else (kohya, dashed)


def _lookup(spellings: dict[str, str], token: str) -> str | None:
    return spellings.get(token.split("=", 1)[0]) if token.startswith("--") else None


def rewrite_argv(argv: list[str]) -> list[str]:
    """Drop ignored kohya flags with a warning, reject unsupported ones with the reason, and
    expand kohya's ``--flag v1 v2`` (nargs="*") into ``--flag v1 --flag v2``."""
    unsupported = {s: name for name in UNSUPPORTED for s in _spellings(name)}
    ignored = {s: name for name in IGNORED_FLAGS for s in _spellings(name)}
    kept: list[str] = []
    for index, token in enumerate(argv):
        if token == "--":
            kept += argv[index:]
            break
        if (name := _lookup(unsupported, token)) is not None:
            raise ConfigError(f"--{name} is a kohya option adapt does not support: {UNSUPPORTED[name]}")
        if (name := _lookup(ignored, token)) is not None:
            click.echo(f"adapt: warning: --{name} has no effect in adapt ({IGNORED_FLAGS[name]})", err=True)
            continue
        kept.append(token)
    multi = frozenset(s for name, spec in field_specs().items() if spec["kind"] == "list" for s in _spellings(name))
    return expand_multi_value(kept, multi, allow_empty=True)  # kohya's nargs="*": no value is no value


class KohyaCommand(click.Command):
    """A click command that parses kohya-style multi-value flags."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rewrite_argv(list(args)))


def train_options(function: F) -> F:
    """One click option per TrainArgs field (defaults stay None: the TrainArgs default applies
    unless the flag was given, so ``--config_file`` values are not shadowed)."""
    for name, spec in reversed(list(field_specs().items())):
        kwargs: dict[str, Any] = {"help": spec["help"], "default": None}
        if spec["kind"] == "flag":
            kwargs.update(is_flag=True, default=False)
        elif spec["kind"] == "list":
            kwargs.update(multiple=True, type=spec["type"], default=())
        elif spec["kind"] == "int_or_float":
            kwargs["type"] = str
        else:
            kwargs["type"] = spec["type"]
        if name in RANGES:
            kwargs["help"] += f" [{RANGES[name].describe()}]"
        if spec["choices"]:
            kwargs["help"] += " [" + "|".join(str(c) for c in spec["choices"] if c is not None) + "]"
        function = kohya_option(f"--{name}", **kwargs)(function)
    return function


def resolve_args(ctx: click.Context, values: dict[str, Any]) -> TrainArgs:
    """Defaults, then the --config_file toml, then the flags given on the command line."""
    given = {
        name: value
        for name, value in values.items()
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    from_cli = {name: coerce(name, value, COMMAND_LINE) for name, value in given.items()}
    from_file: dict[str, Any] = {}
    if given.get("config_file") and not given.get("output_config"):
        from_file = load_config_file(given["config_file"])
    return TrainArgs(**{**field_defaults(), **from_file, **from_cli})


@click.command("train", cls=KohyaCommand, context_settings={"max_content_width": 120})
@train_options
@click.pass_context
def train(ctx: click.Context, **values: Any) -> None:
    """Train a LoRA-family adapter (kohya train_network.py flags; --network lora|c3lier|dylora).

    Example: adapt train --pretrained_model_name_or_path model.safetensors --train_data_dir data
    --resolution 512 --output_dir out --network_dim 16 --learning_rate 1e-4 --max_train_steps 400
    """
    args = resolve_args(ctx, values)
    if args.output_config:
        if not args.config_file:
            raise ConfigError("--output_config: needs --config_file (the toml to write)")
        path = write_config_file(args.config_file, vars(args), overwrite=args.overwrite)
        click.echo(f"wrote {path}")
        return
    args.validate()  # before torch is imported: argument errors answer at once
    from adapters_core.train.interrupt import TrainingInterrupted
    from adapters_core.train.loop import train as run_training

    try:
        result = run_training(args)
    except TrainingInterrupted as interrupted:
        click.echo(f"adapt: {interrupted}; resume with --resume {interrupted.state}", err=True)
        raise click.exceptions.Exit(interrupted.exit_code) from None  # 130 after Ctrl-C, 143 after SIGTERM
    if not result.main_process:
        return
    loss = ""
    if result.first_loss is not None and result.average_loss is not None:
        loss = (
            f"; loss {result.first_loss:.4f} at the first step, "
            f"{result.average_loss:.4f} on average over the last epoch"
        )
    click.echo(f"saved {result.output} ({result.steps} steps, {result.epochs} epochs{loss})")
