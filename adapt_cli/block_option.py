"""The ``--block_weights`` option of the commands that apply adapters (generate, grid, merge, svd-merge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from adapters_core.blocks import BLOCK_WEIGHT_PRESETS, NUM_BLOCKS

F = Callable[..., Any]

BLOCK_WEIGHTS_HELP = (
    "Per-block multipliers (A1111 LoRA Block Weight, kohya's --lbws): a preset "
    f"({', '.join(BLOCK_WEIGHT_PRESETS)}) or {NUM_BLOCKS} numbers IN00..OUT11, {NUM_BLOCKS + 1} with the text "
    "encoder (BASE) first, or LBW's 17; one spec for every file or one per file ('none' for a file without)."
)


def block_weights_option() -> Callable[[F], F]:
    """``--block_weights`` (also ``--block-weights`` and kohya's ``--lbws``), several values after one flag."""
    return click.option(
        "--block_weights", "--block-weights", "--lbws", "block_weights", multiple=True, help=BLOCK_WEIGHTS_HELP
    )
