"""Click helpers shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
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
