"""The ``--block_weights`` option of the commands that apply adapters (generate, grid, merge, svd-merge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from adapters_core.blocks import BLOCK_WEIGHT_PRESETS

F = Callable[..., Any]

BLOCK_WEIGHTS_HELP = (
    "Per-block multipliers (A1111 LoRA Block Weight, kohya's --lbws): a preset "
    f"({', '.join(BLOCK_WEIGHT_PRESETS)}) or one number per block: SD 1.x/2.x 25 (IN00..OUT11), 26 with the "
    "text encoder (BASE) first, or LBW's 17; SDXL 19 (IN00..OUT08), 20 with BASE, or LBW's 12. One spec for "
    "every file or one per file ('none' for a file without)."
)


def block_weights_option() -> Callable[[F], F]:
    """``--block_weights`` (also ``--block-weights`` and kohya's ``--lbws``), several values after one flag."""
    return click.option(
        "--block_weights", "--block-weights", "--lbws", "block_weights", multiple=True, help=BLOCK_WEIGHTS_HELP
    )
