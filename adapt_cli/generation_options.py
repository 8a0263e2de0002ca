"""Flags ``adapt generate`` and ``adapt grid`` share: the model, the adapters, the sampling.

Each group is one decorator, so both commands spell and document a flag the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from adapt_cli.block_option import block_weights_option
from adapt_cli.options import (
    ADAPTER,
    DEVICE,
    FINITE,
    INPUT_PATH,
    POSITIVE_INT,
    SEED,
    Number,
    kohya_option,
)
from adapters_core.choices import PRECISION_NAMES, SAMPLER_NAMES
from adapters_core.errors import ConfigError
from adapters_core.generate.prompts import PromptJob

if TYPE_CHECKING:
    from adapters_core.models import SDModel

F = Callable[..., Any]
MULTI_VALUE = ("network_weights", "network_mul", "network_module", "block_weights")
IMAGE_SIDE = Number(int, 8, 16384)


def _stack(decorators: list[Callable[[F], F]]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


model_options = _stack([
    click.option("--model", "--ckpt", "--pretrained_model_name_or_path", "model", required=True,
                 type=INPUT_PATH, help="Base model: a Diffusers folder or a .safetensors/.ckpt checkpoint."),
    click.option("--v2", is_flag=True, help="The model is SD 2.x (detected when left out)."),
    kohya_option("--v_parameterization", is_flag=True, help="The model predicts v (a single file cannot tell)."),
    click.option("--tokenizer", type=INPUT_PATH, default=None,
                 help="CLIP tokenizer folder (or a Diffusers model folder) for single-file models."),
    click.option("--device", type=DEVICE, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    click.option("--dtype", type=click.Choice(PRECISION_NAMES), default="float", show_default=True,
                 help="Model precision."),
])

adapter_options = _stack([
    kohya_option("--network_weights", multiple=True, type=ADAPTER,
                 help="Adapter files to apply (several allowed: --network_weights a.safetensors b.safetensors)."),
    kohya_option("--network_mul", multiple=True, type=FINITE,
                 help="Multiplier of each adapter, one per --network_weights file (default 1.0 each)."),
    kohya_option("--network_module", multiple=True, expose_value=False,
                 help="Accepted for kohya's gen_img command lines and ignored: each file's type is detected from its keys."),
    block_weights_option(),
])

sampling_options = _stack([
    kohya_option("--negative_prompt", default="", help="Negative prompt (a prompt line's --n overrides it)."),
    click.option("--steps", type=Number(int, 1, 10000), default=50, show_default=True, help="Sampling steps."),
    click.option("--scale", type=FINITE, default=7.5, show_default=True, help="Guidance (CFG) scale."),
    click.option("--W", "--width", "width", type=IMAGE_SIDE, default=None, help="Width (default 512, 768 for v-parameterization)."),
    click.option("--H", "--height", "height", type=IMAGE_SIDE, default=None, help="Height (default like --W)."),
    click.option("--seed", type=SEED, default=None, help="Seed of the first image of each prompt (random if left out)."),
    click.option("--sampler", type=click.Choice(sorted(SAMPLER_NAMES)), default="ddim", show_default=True, help="Sampler."),
    kohya_option("--clip_skip", type=POSITIVE_INT, default=None,
                 help="Use the text encoder's N-th layer from the end (2 for anime models)."),
    kohya_option("--max_token_length", type=click.Choice(("75", "150", "225")), default=None,
                 help="Prompt length in tokens (150/225: longer prompts, as in training)."),
    click.option("--outdir", type=click.Path(path_type=Path), required=True, help="Folder for the PNGs (created)."),
])


def check_multipliers(network_weights: tuple[Path, ...], network_mul: tuple[float, ...]) -> None:
    if network_mul and len(network_mul) != len(network_weights):
        raise ConfigError(
            f"--network_mul: got {len(network_mul)} values for {len(network_weights)} --network_weights files; "
            "give one multiplier per file"
        )


def check_output_folder(outdir: Path) -> None:
    """The images' folder (or where it will be made) must take files: checked before any work."""
    from adapters_core.atomic import check_writable

    check_writable(outdir / "image.png", overwrite=True)


def base_job(negative_prompt: str, steps: int, scale: float, width: int | None, height: int | None,
             v_parameterization: bool) -> PromptJob:
    """The prompt settings every line starts from (512 px, 768 for v-parameterization)."""
    default_size = 768 if v_parameterization else 512
    return PromptJob(
        prompt="", negative_prompt=negative_prompt, width=width or height or default_size,
        height=height or width or default_size, steps=steps, scale=scale,
    )


def model_from_flags(model: Path, v2: bool, v_parameterization: bool, tokenizer: Path | None, device: str | None,
                     dtype: str) -> SDModel:
    """The base model for generating (a tokenizer is required)."""
    import torch

    from adapters_core.devices import torch_device
    from adapters_core.formats import precision_dtype
    from adapters_core.models import load_sd_model
    from adapters_core.plugins import get_registry

    return load_sd_model(
        model,
        family=get_registry().family_for_v2_flag(v2),
        v_parameterization=True if v_parameterization else None,
        tokenizer_path=tokenizer,
        dtype=precision_dtype(dtype, "--dtype") or torch.float32,
        device=torch_device(device),
    )
