"""The subcommands of ``adapt``; each module defines one click command."""

from __future__ import annotations

import click

from adapt_cli.commands.networks import networks
from adapt_cli.commands.resize_images import resize_images

COMMANDS: list[click.Command] = [networks, resize_images]
