"""``adapt convert``: LoRA files between kohya, diffusers and PEFT formats, math unchanged."""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.options import (
    INPUT_PATH,
    check_suffix,
    kohya_option,
    overwrite_option,
    refuse_existing,
)
from adapters_core.choices import ADAPTER_OUTPUT_SUFFIXES, DIFFUSERS_LAYOUTS, LORA_FORMATS


@click.command("convert")
@click.argument("source", type=INPUT_PATH)
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(LORA_FORMATS), required=True, help="Output format.")
@click.option(
    "--from", "source_format", type=click.Choice(("auto", *LORA_FORMATS)), default="auto", show_default=True,
    help="Input format (auto: from the keys, or a folder's files).",
)
@click.option(
    "--model", default=None,
    help="Base model (Diffusers folder, checkpoint, or sd_v1/sd_v2/sd_v2_v/tiny/sdxl/tiny_sdxl): check every module "
    "against its layers and shape the weights for them (needed for SD 2.x files with 4-D proj weights).",
)
@click.option(
    "--layout", type=click.Choice(DIFFUSERS_LAYOUTS), default="peft", show_default=True,
    help="Key layout of a diffusers output: peft (unet.<path>.lora_A.weight, what save_lora_weights writes) or "
    "comfyui (the older attention-processor keys, read by diffusers and ComfyUI alike).",
)
@kohya_option("--save_precision", type=click.Choice(("float", "fp16", "bf16")), default=None,
              help="Cast the tensors (default: keep the input's dtype).")
@overwrite_option()
def convert(
    source: Path, output: Path, to: str, source_format: str, model: str | None, layout: str,
    save_precision: str | None, overwrite: bool,
) -> None:
    """Convert the LoRA SOURCE to OUTPUT in another format.

    \b
    kohya      OUTPUT.safetensors with lora_unet_*/lora_te_* keys (SDXL: lora_te1_*/lora_te2_*;
               A1111, ComfyUI, sd-scripts)
    diffusers  OUTPUT.safetensors (or a folder) as save_lora_weights writes it; alpha/rank is
               folded into lora_B because the format has no alpha. ComfyUI skips the U-Net
               attention modules of this (peft) layout: --layout comfyui writes the older
               attention-processor keys, which diffusers and ComfyUI both read
    peft       OUTPUT folder with unet/ and text_encoder/ (SDXL: text_encoder_2/ too) PEFT adapters (adapter_config.json with
               per-module rank_pattern/alpha_pattern, adapter_model.safetensors)

    A kohya output whose Linear/1x1 modules differ in alpha gets alpha/rank folded into lora_up
    (alpha = rank), because diffusers would apply the wrong scale to it otherwise.
    """
    if to != "peft":  # a diffusers output without extension is a folder; PEFT always writes a folder
        allowed = (".safetensors",) if to == "diffusers" else ADAPTER_OUTPUT_SUFFIXES
        check_suffix(output, "OUTPUT", allowed, folder_allowed=to == "diffusers")
    refuse_existing(output, overwrite)
    from adapters_core.formats import precision_dtype
    from adapters_core.interop.convert import convert_lora

    result = convert_lora(
        source, output, to, source_format=source_format, model=model,
        dtype=precision_dtype(save_precision), overwrite=overwrite, layout=layout,
    )
    click.echo(f"{result.output}: {result.modules} modules ({result.source_format} -> {to}); {result.readers}")
    if result.warning:
        click.echo(f"adapt: warning: {result.warning}", err=True)
