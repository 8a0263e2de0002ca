"""``adapt generate``: images from a base model and adapters, with A1111-style PNG parameters.

Flags follow kohya's ``gen_img.py`` where they overlap (``--network_weights a b
--network_mul 0.8 0.5``, ``--from_file``, ``--W``/``--H``, ``--n_iter``); list-valued flags take
several values after one flag, as argparse's ``nargs="*"`` does, or one value per repeated flag.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.generation_options import (
    MULTI_VALUE,
    adapter_options,
    base_job,
    check_multipliers,
    check_output_folder,
    model_from_flags,
    model_options,
    sampling_options,
)
from adapt_cli.options import INPUT_FILE, POSITIVE_INT, MultiValueCommand, kohya_option
from adapters_core.errors import ConfigError
from adapters_core.generate.prompts import parse_prompt_line, read_prompts_file


@click.command("generate", cls=MultiValueCommand, multi_value=MULTI_VALUE)
@model_options
@adapter_options
@click.option("--merge", "--network_merge", "merge", is_flag=True,
              help="Merge the adapters into the weights instead of patching the layers (faster, same images).")
@kohya_option("--allow_unmatched", is_flag=True,
              help="Apply the modules that name a layer of the model and list the others "
              "(default: stop when a module names no layer).")
@click.option("--prompt", default=None, help="The prompt (may carry per-line options such as --n).")
@kohya_option("--from_file", type=INPUT_FILE, default=None,
              help="Prompts file: one prompt per line with kohya's options --n --w --h --s --l --d --am.")
@sampling_options
@click.option("--batch_count", "--batch-count", "--n_iter", "batch_count", type=POSITIVE_INT, default=1, show_default=True,
              help="Pipeline runs per prompt.")
@kohya_option("--images_per_prompt", type=POSITIVE_INT, default=1, show_default=True, help="Images per pipeline run.")
def generate(
    model: Path, v2: bool, v_parameterization: bool, tokenizer: Path | None, device: str | None, dtype: str,
    network_weights: tuple[Path, ...], network_mul: tuple[float, ...], block_weights: tuple[str, ...],
    merge: bool, allow_unmatched: bool, prompt: str | None, from_file: Path | None,
    negative_prompt: str, steps: int, scale: float, width: int | None, height: int | None, seed: int | None,
    sampler: str, clip_skip: int | None, max_token_length: str | None, outdir: Path,
    batch_count: int, images_per_prompt: int,
) -> None:
    """Generate images with MODEL and adapters; each PNG carries its generation parameters
    (A1111 format, with <lora:name:mul> tags and hashes) and is named NNNNN-<seed>.png."""
    check_multipliers(network_weights, network_mul)
    if (prompt is None) == (from_file is None):
        raise ConfigError("give either --prompt or --from_file")
    check_output_folder(outdir)
    base = base_job(negative_prompt, steps, scale, width, height, v_parameterization)
    if from_file is not None:
        jobs = read_prompts_file(from_file, base)
    else:
        assert prompt is not None  # exactly one of them, checked above
        jobs = [parse_prompt_line(prompt, base, "--prompt")]
    from adapters_core.generate.images import GenerationSettings, generate_to_folder

    settings = GenerationSettings(
        sampler=sampler, batch_count=batch_count, images_per_prompt=images_per_prompt, seed=seed, clip_skip=clip_skip,
        max_token_length=int(max_token_length) if max_token_length else None,
    )
    written = generate_to_folder(
        model_from_flags(model, v2, v_parameterization, tokenizer, device, dtype), model, jobs, settings, outdir,
        network_weights=list(network_weights), network_mul=list(network_mul) or None, merge=merge,
        allow_unmatched=allow_unmatched, block_weights=block_weights,
    )
    click.echo(f"{outdir}: wrote {len(written)} images")
