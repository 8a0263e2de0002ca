"""``adapt merge``: adapters into a checkpoint (``--sd_model``) or into one adapter.

kohya's ``networks/merge_lora.py`` flags, each also accepted with dashes. ``--models`` and
``--ratios`` take several values after one flag, as kohya's (``--models a.safetensors
b.safetensors --ratios 0.7 -0.3``); repeating the flag works too.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.block_option import block_weights_option
from adapt_cli.options import (
    ADAPTER,
    FINITE,
    INPUT_PATH,
    PRECISIONS,
    MultiValueCommand,
    check_suffix,
    kohya_option,
    overwrite_option,
    refuse_existing,
)
from adapters_core.choices import ADAPTER_OUTPUT_SUFFIXES, CHECKPOINT_OUTPUT_SUFFIXES
from adapters_core.errors import ConfigError


@click.command("merge", cls=MultiValueCommand, multi_value=("models", "ratios", "block_weights"))
@kohya_option(
    "--sd_model",
    type=INPUT_PATH,
    default=None,
    help="Checkpoint to merge into (single .safetensors/.ckpt or Diffusers folder). "
    "Without it the adapters are merged into one adapter.",
)
@kohya_option(
    "--models",
    multiple=True,
    required=True,
    type=ADAPTER,
    help="Adapter files or diffusers/PEFT adapter folders (one or more after the flag).",
)
@kohya_option("--ratios", multiple=True, type=FINITE, help="One ratio per model (negative allowed); default 1 each.")
@kohya_option(
    "--save_to",
    required=True,
    type=click.Path(path_type=Path),
    help="Output: .safetensors/.ckpt (adapter, or checkpoint in the original layout) or a Diffusers folder.",
)
@kohya_option("--precision", type=PRECISIONS, default="float", show_default=True, help="Precision of the merge.")
@kohya_option("--save_precision", type=PRECISIONS, default=None, help="Precision of the output (default: --precision).")
@kohya_option("--v2", is_flag=True, default=None, help="The checkpoint is SD 2.x (detected when not given).")
@kohya_option(
    "--v_parameterization", is_flag=True, default=None, help="Record v-prediction in the merged checkpoint's metadata."
)
@kohya_option("--concat", is_flag=True, help="Stack the ranks: the written adapter is the exact sum of the deltas.")
@kohya_option("--shuffle", is_flag=True, help="Permute the rank components of the merged adapter.")
@kohya_option("--allow_unmatched", is_flag=True,
              help="With --sd_model: merge the modules that name a layer of the model and list the others "
              "(default: stop when a module names no layer).")
@block_weights_option()
@overwrite_option()
def merge(
    sd_model: Path | None,
    models: tuple[Path, ...],
    ratios: tuple[float, ...],
    save_to: Path,
    precision: str,
    save_precision: str | None,
    v2: bool | None,
    v_parameterization: bool | None,
    concat: bool,
    shuffle: bool,
    allow_unmatched: bool,
    block_weights: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Merge adapters into a checkpoint (W += ratio * delta) or into one adapter.

    Without --sd_model, adapters of equal ranks are blended with kohya's rule (the square
    root of each ratio scales both factors); --concat writes the exact sum instead (the
    ranks add up). For adapters of different ranks use --concat or `adapt svd-merge`.
    """
    if sd_model is not None and (concat or shuffle):
        raise ConfigError("--concat/--shuffle: only for merging adapters into one adapter (without --sd_model)")
    if sd_model is not None:
        check_suffix(save_to, "--save_to", CHECKPOINT_OUTPUT_SUFFIXES, folder_allowed=True)
    else:
        check_suffix(save_to, "--save_to", ADAPTER_OUTPUT_SUFFIXES)
    refuse_existing(save_to, overwrite)
    if sd_model is not None:
        from adapters_core.ops.merge_model import merge_into_model
        from adapters_core.plugins import get_registry

        path = merge_into_model(
            sd_model,
            list(models),
            list(ratios),
            save_to=save_to,
            precision=precision,
            save_precision=save_precision,
            family=get_registry().family_for_v2_flag(v2),
            v_parameterization=v_parameterization,
            overwrite=overwrite,
            allow_unmatched=allow_unmatched,
            block_weights=block_weights,
        )
        click.echo(f"{path}: merged {len(models)} adapter(s) into {sd_model}")
        return
    from adapters_core.ops.merge import merge_adapters

    path = merge_adapters(
        list(models),
        list(ratios),
        save_to=save_to,
        concat=concat,
        shuffle=shuffle,
        precision=precision,
        save_precision=save_precision,
        overwrite=overwrite,
        block_weights=block_weights,
    )
    click.echo(f"{path}: merged {len(models)} adapter(s){' (concatenated ranks)' if concat else ''}")
