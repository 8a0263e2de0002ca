"""Click helpers shared by the commands."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

F = Callable[..., Any]


def kohya_option(flag: str, *extra: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option accepted in kohya's spelling (``--network_dim``) and click's (``--network-dim``)."""
    name = flag.lstrip("-")
    spellings = [flag]
    dashed = "--" + name.replace("_", "-")
    if dashed != flag:
        spellings.append(dashed)
    return click.option(*spellings, *extra, name.replace("-", "_"), **kwargs)


def overwrite_option() -> Callable[[F], F]:
    return click.option("--overwrite", is_flag=True, help="Replace an existing output.")


PRECISIONS = click.Choice(["float", "fp16", "bf16"])


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative ratio is a value
    except ValueError:
        return True
    return False


def expand_multi_value(args: Sequence[str], flags: frozenset[str]) -> list[str]:
    """``--models a b --ratios 1 -0.5`` -> ``--models a --models b --ratios 1 --ratios -0.5``."""
    out: list[str] = []
    current: str | None = None
    consumed = False
    for token in args:
        if current is not None and not _is_flag(token):
            out += [current, token]
            consumed = True
            continue
        if current is not None and not consumed:
            out.append(current)  # a flag without value: let click report it
        current, consumed = (token, False) if token in flags else (None, False)
        if current is None:
            out.append(token)
    if current is not None and not consumed:
        out.append(current)
    return out


class MultiValueCommand(click.Command):
    """A command whose ``multi_value`` options take one or more values after a single flag
    (argparse's ``nargs="+"``, which click lacks); they are declared ``multiple=True``."""

    def __init__(self, *args: Any, multi_value: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.multi_value = tuple(multi_value)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = frozenset(opt for p in self.params if p.name in self.multi_value for opt in p.opts)
        return super().parse_args(ctx, expand_multi_value(args, flags))
