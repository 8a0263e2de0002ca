"""``adapt svd-merge``: adapters of any ranks into one adapter of a chosen rank.

kohya's ``networks/svd_merge_lora.py`` flags (also with dashes); ``--models`` and
``--ratios`` take several values after one flag. The SVD of the summed deltas is computed
from the adapters' factors, exactly (no full matrix) where the types are factor-based.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.block_option import block_weights_option
from adapt_cli.options import (
    ADAPTER,
    DEVICE,
    FINITE,
    POSITIVE_INT,
    PRECISIONS,
    MultiValueCommand,
    Number,
    check_suffix,
    kohya_option,
    overwrite_option,
    refuse_existing,
)
from adapters_core.choices import ADAPTER_OUTPUT_SUFFIXES


@click.command("svd-merge", cls=MultiValueCommand, multi_value=("models", "ratios", "block_weights"))
@kohya_option(
    "--models",
    multiple=True,
    required=True,
    type=ADAPTER,
    help="Adapter files or folders (one or more after the flag); ranks and module sets may differ.",
)
@kohya_option("--ratios", multiple=True, type=FINITE, help="One ratio per model (negative allowed); default 1 each.")
@kohya_option("--save_to", required=True, type=click.Path(path_type=Path), help="Output adapter file.")
@kohya_option("--new_rank", type=POSITIVE_INT, default=4, show_default=True, help="Rank of the merged Linear/1x1 modules.")
@kohya_option("--new_conv_rank", type=POSITIVE_INT, default=None, help="Rank of merged 3x3 conv modules (default: --new_rank).")
@kohya_option("--device", type=DEVICE, default="cpu", show_default=True, help="Device for the decompositions (cpu, cuda, ...).")
@kohya_option(
    "--precision",
    type=PRECISIONS,
    default="float",
    show_default=True,
    help="Accepted for kohya compatibility: the decompositions always run in float32.",
)
@kohya_option("--save_precision", type=PRECISIONS, default=None, help="Precision of the output (default: --precision).")
@kohya_option(
    "--clamp_quantile",
    type=Number(float, 0, 1, low_open=True),
    default=None,
    help="Clamp the factors to this quantile of their absolute values (kohya uses 0.99); off by default.",
)
@block_weights_option()
@overwrite_option()
def svd_merge(
    models: tuple[Path, ...],
    ratios: tuple[float, ...],
    save_to: Path,
    new_rank: int,
    new_conv_rank: int | None,
    device: str,
    precision: str,
    save_precision: str | None,
    clamp_quantile: float | None,
    block_weights: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Merge adapters into one of rank --new_rank: the best rank-k fit of sum(ratio * delta).

    Exact when --new_rank is at least the sum of the input ranks. Output alpha = rank.
    """
    check_suffix(save_to, "--save_to", ADAPTER_OUTPUT_SUFFIXES)
    refuse_existing(save_to, overwrite)
    from adapters_core.devices import torch_device
    from adapters_core.ops.svd_merge import svd_merge as svd_merge_files

    path = svd_merge_files(
        list(models),
        list(ratios),
        save_to=save_to,
        new_rank=new_rank,
        new_conv_rank=new_conv_rank,
        device=torch_device(device),
        precision=precision,
        save_precision=save_precision,
        clamp_quantile=clamp_quantile,
        overwrite=overwrite,
        block_weights=block_weights,
    )
    click.echo(f"{path}: svd-merged {len(models)} adapter(s) at rank {new_rank}")
