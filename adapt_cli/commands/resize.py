"""``adapt resize``: change an adapter's rank, keeping its effective scale.

kohya's ``networks/resize_lora.py`` flags (also with dashes). Works for every adapter type:
factor-based modules are decomposed from their factors, others through their delta.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.options import (
    ADAPTER,
    DEVICE,
    POSITIVE_INT,
    PRECISIONS,
    Number,
    check_suffix,
    kohya_option,
    overwrite_option,
    refuse_existing,
)
from adapters_core.choices import ADAPTER_OUTPUT_SUFFIXES, DYNAMIC_METHODS


@click.command("resize")
@kohya_option("--model", required=True, type=ADAPTER, help="Adapter file to resize.")
@kohya_option("--save_to", required=True, type=click.Path(path_type=Path), help="Output adapter file.")
@kohya_option(
    "--new_rank",
    type=POSITIVE_INT,
    default=4,
    show_default=True,
    help="New rank of Linear/1x1 modules (the cap when --dynamic_method is given).",
)
@kohya_option("--new_conv_rank", type=POSITIVE_INT, default=None, help="New rank of 3x3 conv modules (default: --new_rank).")
@kohya_option(
    "--dynamic_method",
    type=click.Choice(DYNAMIC_METHODS),
    default=None,
    help="Choose each module's rank from its singular values.",
)
@kohya_option(
    "--dynamic_param",
    type=Number(float, 0, low_open=True),
    default=None,
    help="sv_ratio: largest/smallest kept value (>= 1); sv_fro, sv_cumulative: fraction kept (0-1].",
)
@kohya_option("--save_precision", type=PRECISIONS, default="float", show_default=True, help="Precision of the output.")
@kohya_option("--device", type=DEVICE, default="cpu", show_default=True, help="Device for the decompositions.")
@click.option("--verbose", is_flag=True, help="Print the energy each module retains.")
@overwrite_option()
def resize(
    model: Path,
    save_to: Path,
    new_rank: int,
    new_conv_rank: int | None,
    dynamic_method: str | None,
    dynamic_param: float | None,
    save_precision: str,
    device: str,
    verbose: bool,
    overwrite: bool,
) -> None:
    """Resize an adapter to --new_rank (or a per-module rank from --dynamic_method)."""
    check_suffix(save_to, "--save_to", ADAPTER_OUTPUT_SUFFIXES)
    refuse_existing(save_to, overwrite)
    from adapters_core.devices import torch_device
    from adapters_core.ops.fit import FitSummary
    from adapters_core.ops.resize import resize_adapter

    path, report = resize_adapter(
        model,
        save_to=save_to,
        new_rank=new_rank,
        new_conv_rank=new_conv_rank,
        dynamic_method=dynamic_method,
        dynamic_param=dynamic_param,
        save_precision=save_precision,
        device=torch_device(device),
        overwrite=overwrite,
    )
    if verbose:
        for item in report:
            click.echo(
                f"{item.name}: rank {item.old_rank} -> {item.new_rank}, sum(S) retained {item.sum_retained:.1%}, "
                f"Frobenius retained {item.fit.kept:.1%}, S[0]/S[k-1] {item.max_ratio:.3g}"
            )
    ranks = sorted({item.new_rank for item in report})
    shown = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}"
    fit = FitSummary(tuple(item.fit for item in report))
    click.echo(f"{path}: resized {len(report)} modules to rank {shown}; {fit.describe()}")
