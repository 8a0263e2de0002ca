"""The subcommands of ``adapt``; each module defines one click command."""

from __future__ import annotations

import click

from adapt_cli.commands.check import check
from adapt_cli.commands.convert import convert
from adapt_cli.commands.extract import extract
from adapt_cli.commands.generate import generate
from adapt_cli.commands.grid import grid
from adapt_cli.commands.inspect import inspect
from adapt_cli.commands.merge import merge
from adapt_cli.commands.networks import networks
from adapt_cli.commands.quickstart import quickstart
from adapt_cli.commands.resize import resize
from adapt_cli.commands.resize_images import resize_images
from adapt_cli.commands.svd_merge import svd_merge
from adapt_cli.commands.train import train

COMMANDS: list[click.Command] = [
    train,
    quickstart,
    networks,
    merge,
    svd_merge,
    extract,
    resize,
    inspect,
    generate,
    grid,
    check,
    convert,
    resize_images,
]
