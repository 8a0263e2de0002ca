"""``adapt extract``: an adapter from two checkpoints, or lower ranks from a DyLoRA file.

* ``--model_org A --model_tuned B --save_to out.safetensors``: kohya's
  ``networks/extract_lora_from_models.py`` (flags also with dashes), for any adapter type
  (``--network``), with a randomized SVD by default (``--svd exact`` for the full one).
* ``--from_dylora FILE --unit U --save_to out.safetensors``: kohya's
  ``networks/extract_lora_from_dylora.py``; writes ``out-0004.safetensors`` ... for ranks
  U, 2U, ... below the file's rank.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.options import (
    DEVICE,
    INPUT_FILE,
    INPUT_PATH,
    POSITIVE_INT,
    PRECISIONS,
    Number,
    check_suffix,
    kohya_option,
    overwrite_option,
    refuse_existing,
)
from adapters_core.choices import ADAPTER_OUTPUT_SUFFIXES, DEFAULT_SVD, SVD_METHODS
from adapters_core.errors import ConfigError


@click.command("extract")
@kohya_option(
    "--model_org",
    type=INPUT_PATH,
    default=None,
    help="Original checkpoint (single file or Diffusers folder).",
)
@kohya_option(
    "--model_tuned",
    type=INPUT_PATH,
    default=None,
    help="Fine-tuned checkpoint of the same architecture.",
)
@kohya_option("--save_to", required=True, type=click.Path(path_type=Path), help="Output adapter file.")
@kohya_option("--dim", type=POSITIVE_INT, default=4, show_default=True, help="Rank of Linear/1x1 modules.")
@kohya_option("--conv_dim", type=POSITIVE_INT, default=None, help="Rank of 3x3 conv modules (C3Lier); none when not given.")
@kohya_option("--network", default="lora", show_default=True, help="Adapter type to extract (any installed type).")
@kohya_option("--v2", is_flag=True, default=None, help="The checkpoints are SD 2.x (detected when not given).")
@kohya_option("--v_parameterization", is_flag=True, default=None, help="The checkpoints are v-prediction models.")
@kohya_option(
    "--svd",
    type=click.Choice(SVD_METHODS),
    default=DEFAULT_SVD,
    show_default=True,
    help="randomized: within 1% of the exact truncation, many times faster; exact: full SVD.",
)
@kohya_option(
    "--clamp_quantile",
    type=Number(float, 0, 1, low_open=True),
    default=None,
    help="kohya's clamp: both factors to this quantile of their values (kohya: 0.99; 1 = no clipping). "
    "Default: only each factor's outliers, and only while the fit stays within 1% of the best rank-k fit.",
)
@kohya_option(
    "--min_diff",
    type=Number(float, 0),
    default=0.01,
    show_default=True,
    help="The text encoder is extracted only if some weight moved by more than this.",
)
@kohya_option("--device", type=DEVICE, default="cpu", show_default=True, help="Device for the decompositions.")
@kohya_option("--load_precision", type=PRECISIONS, default=None, help="Precision to load the checkpoints in.")
@kohya_option("--save_precision", type=PRECISIONS, default=None, help="Precision of the output.")
@kohya_option(
    "--from_dylora",
    type=INPUT_FILE,
    default=None,
    help="Split this DyLoRA file into ranks --unit, 2*--unit, ... instead.",
)
@kohya_option("--unit", type=POSITIVE_INT, default=None, help="Rank step of --from_dylora.")
@overwrite_option()
def extract(
    model_org: Path | None,
    model_tuned: Path | None,
    save_to: Path,
    dim: int,
    conv_dim: int | None,
    network: str,
    v2: bool | None,
    v_parameterization: bool | None,
    svd: str,
    clamp_quantile: float | None,
    min_diff: float,
    device: str,
    load_precision: str | None,
    save_precision: str | None,
    from_dylora: Path | None,
    unit: int | None,
    overwrite: bool,
) -> None:
    """Extract an adapter: the best rank --dim fit of model_tuned - model_org, layer by layer."""
    if from_dylora is not None:
        if model_org is not None or model_tuned is not None:
            raise ConfigError("--from_dylora: give either --from_dylora or --model_org/--model_tuned, not both")
        if unit is None:
            raise ConfigError("--from_dylora needs --unit (the rank step, e.g. the unit the DyLoRA was trained with)")
        from adapters_core.ops.dylora_split import split_dylora

        paths = split_dylora(
            from_dylora, unit=unit, save_to=save_to, save_precision=save_precision, overwrite=overwrite
        )
        click.echo(f"wrote {len(paths)} adapters: {', '.join(p.name for p in paths)}")
        return
    if model_org is None or model_tuned is None:
        raise ConfigError("--model_org and --model_tuned are both required (or --from_dylora FILE --unit U)")
    check_suffix(save_to, "--save_to", ADAPTER_OUTPUT_SUFFIXES)
    refuse_existing(save_to, overwrite)
    from adapters_core.devices import torch_device
    from adapters_core.ops.extract import extract_from_models
    from adapters_core.plugins import get_registry

    path, extraction = extract_from_models(
        model_org,
        model_tuned,
        save_to=save_to,
        dim=dim,
        conv_dim=conv_dim,
        network=network,
        family=get_registry().family_for_v2_flag(v2),
        v_parameterization=v_parameterization,
        svd=svd,
        clamp_quantile=clamp_quantile,
        min_diff=min_diff,
        device=torch_device(device),
        load_precision=load_precision,
        save_precision=save_precision,
        overwrite=overwrite,
    )
    click.echo(f"{path}: extracted {len(extraction.modules)} modules; {extraction.fit.describe()}")
