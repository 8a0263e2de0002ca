"""``adapt generate``: images from a base model and adapters, with A1111-style PNG parameters.

Flags follow kohya's ``gen_img.py`` where they overlap (``--network_weights a b
--network_mul 0.8 0.5``, ``--from_file``, ``--W``/``--H``, ``--n_iter``); list-valued flags take
several values after one flag, as argparse's ``nargs="*"`` does, or one value per repeated flag.
"""

from __future__ import annotations

from pathlib import Path

import click
from adapt_cli.options import (
    ADAPTER,
    DEVICE,
    FINITE,
    INPUT_FILE,
    INPUT_PATH,
    POSITIVE_INT,
    SEED,
    MultiValueCommand,
    Number,
    kohya_option,
)

from adapters_core.atomic import check_writable
from adapters_core.choices import SAMPLER_NAMES
from adapters_core.errors import ConfigError, OutputError
from adapters_core.generate_prompts import (
    PromptJob,
    parse_prompt_line,
    read_prompts_file,
)

IMAGE_SIDE = Number(int, 8, 16384)


@click.command("generate", cls=MultiValueCommand, multi_value=("network_weights", "network_mul", "network_module"))
@click.option("--model", "--ckpt", "--pretrained_model_name_or_path", "model", required=True,
              type=INPUT_PATH, help="Base model: a Diffusers folder or a .safetensors/.ckpt checkpoint.")
@kohya_option("--network_weights", multiple=True, type=ADAPTER,
              help="Adapter files to apply (several allowed: --network_weights a.safetensors b.safetensors).")
@kohya_option("--network_mul", multiple=True, type=FINITE,
              help="Multiplier of each adapter, one per --network_weights file (default 1.0 each).")
@kohya_option("--network_module", multiple=True, expose_value=False,
              help="Accepted for kohya's gen_img command lines and ignored: each file's type is detected from its keys.")
@click.option("--merge", "--network_merge", "merge", is_flag=True,
              help="Merge the adapters into the weights instead of patching the layers (faster, same images).")
@kohya_option("--allow_unmatched", is_flag=True,
              help="Apply the modules that name a layer of the model and list the others (default: stop).")
@click.option("--prompt", default=None, help="The prompt (may carry per-line options such as --n).")
@kohya_option("--negative_prompt", default="", help="Negative prompt (a prompt line's --n overrides it).")
@kohya_option("--from_file", type=INPUT_FILE, default=None,
              help="Prompts file: one prompt per line with kohya's options --n --w --h --s --l --d --am.")
@click.option("--steps", type=Number(int, 1, 10000), default=50, show_default=True, help="Sampling steps.")
@click.option("--scale", type=FINITE, default=7.5, show_default=True, help="Guidance (CFG) scale.")
@click.option("--W", "--width", "width", type=IMAGE_SIDE, default=None, help="Width (default 512, 768 for v-parameterization).")
@click.option("--H", "--height", "height", type=IMAGE_SIDE, default=None, help="Height (default like --W).")
@click.option("--seed", type=SEED, default=None, help="Seed of the first image of each prompt (random if left out).")
@click.option("--sampler", type=click.Choice(sorted(SAMPLER_NAMES)), default="ddim", show_default=True, help="Sampler.")
@click.option("--batch_count", "--batch-count", "--n_iter", "batch_count", type=POSITIVE_INT, default=1, show_default=True,
              help="Pipeline runs per prompt.")
@kohya_option("--images_per_prompt", type=POSITIVE_INT, default=1, show_default=True, help="Images per pipeline run.")
@click.option("--outdir", type=click.Path(path_type=Path), required=True, help="Folder for the PNGs (created).")
@click.option("--v2", is_flag=True, help="The model is SD 2.x (detected when left out).")
@kohya_option("--v_parameterization", is_flag=True, help="The model predicts v (a single file cannot tell).")
@click.option("--tokenizer", type=INPUT_PATH, default=None,
              help="CLIP tokenizer folder (or a Diffusers model folder) for single-file models.")
@kohya_option("--clip_skip", type=POSITIVE_INT, default=None, help="Use the text encoder's N-th layer from the end (2 for anime models).")
@kohya_option("--max_token_length", type=click.Choice(("75", "150", "225")), default=None,
              help="Prompt length in tokens (150/225: longer prompts, as in training).")
@click.option("--device", type=DEVICE, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--dtype", type=click.Choice(("float", "fp16", "bf16")), default="float", show_default=True,
              help="Model precision.")
def generate(
    model: Path, network_weights: tuple[Path, ...], network_mul: tuple[float, ...],
    merge: bool, allow_unmatched: bool, prompt: str | None, negative_prompt: str, from_file: Path | None, steps: int, scale: float,
    width: int | None, height: int | None, seed: int | None, sampler: str, batch_count: int, images_per_prompt: int,
    outdir: Path, v2: bool, v_parameterization: bool, tokenizer: Path | None, clip_skip: int | None,
    max_token_length: str | None, device: str | None, dtype: str,
) -> None:
    """Generate images with MODEL and adapters; each PNG carries its generation parameters
    (A1111 format, with <lora:name:mul> tags and hashes) and is named NNNNN-<seed>.png."""
    if network_mul and len(network_mul) != len(network_weights):
        raise ConfigError(
            f"--network_mul: got {len(network_mul)} values for {len(network_weights)} --network_weights files; "
            "give one multiplier per file"
        )
    if (prompt is None) == (from_file is None):
        raise ConfigError("give either --prompt or --from_file")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"--outdir {outdir}: is a file; expected a folder for the images")
    check_writable(outdir / "image.png", overwrite=True)  # the folder (or where it will be made) takes files
    default_size = 768 if v_parameterization else 512
    base = PromptJob(
        prompt="", negative_prompt=negative_prompt, width=width or height or default_size,
        height=height or width or default_size, steps=steps, scale=scale,
    )
    jobs = [parse_prompt_line(prompt, base, "--prompt")] if prompt is not None else read_prompts_file(from_file, base)
    import torch

    from adapters_core.devices import torch_device
    from adapters_core.formats import precision_dtype
    from adapters_core.generate import GenerationSettings, generate_to_folder

    settings = GenerationSettings(
        sampler=sampler, batch_count=batch_count, images_per_prompt=images_per_prompt, seed=seed, clip_skip=clip_skip,
        max_token_length=int(max_token_length) if max_token_length else None,
    )
    written = generate_to_folder(
        model, jobs, settings, outdir,
        network_weights=list(network_weights),
        network_mul=list(network_mul) or None,
        merge=merge,
        allow_unmatched=allow_unmatched,
        v2=True if v2 else None,
        v_parameterization=True if v_parameterization else None,
        tokenizer=tokenizer,
        dtype=precision_dtype(dtype, "--dtype") or torch.float32,
        device=str(torch_device(device)),
    )
    click.echo(f"{outdir}: wrote {len(written)} images")
