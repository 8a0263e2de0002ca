"""``adapt grid``: a labelled grid of images over up to three axes (A1111's X/Y/Z plot).

``--x "adapter=output/run-*.safetensors" --y "mul=0,0.5,1" --z "prompt=a cat|a dog"``; see
:mod:`adapters_core.generate.grid` for the axis kinds. Writes ``grid-NNNNN.png`` (the grid's full
parameters in its ``adapt_grid`` text chunk) and every cell as ``NNNNN-<seed>.png`` with
A1111 parameters.
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
from adapt_cli.options import MultiValueCommand
from adapters_core.choices import GRID_AXIS_KINDS
from adapters_core.generate.prompts import parse_prompt_line

AXIS_HELP = f"KIND=VALUES with KIND one of {', '.join(GRID_AXIS_KINDS)} (e.g. 'mul=0,0.5,1', 'prompt=a cat|a dog')."


@click.command("grid", cls=MultiValueCommand, multi_value=MULTI_VALUE)
@model_options
@adapter_options
@click.option("--prompt", default="", help="The prompt of every cell (unless a 'prompt' axis varies it).")
@click.option("--x", "x_axis", required=True, help=f"Columns: {AXIS_HELP}")
@click.option("--y", "y_axis", default=None, help="Rows (like --x).")
@click.option("--z", "z_axis", default=None, help="Side-by-side sub-grids (like --x).")
@click.option("--title", default=None, help="Title drawn above the grid (default: the model and the prompt).")
@sampling_options
def grid(
    model: Path, v2: bool, v_parameterization: bool, tokenizer: Path | None, device: str | None, dtype: str,
    network_weights: tuple[Path, ...], network_mul: tuple[float, ...], block_weights: tuple[str, ...],
    prompt: str, x_axis: str, y_axis: str | None, z_axis: str | None, title: str | None,
    negative_prompt: str, steps: int, scale: float, width: int | None, height: int | None, seed: int | None,
    sampler: str, clip_skip: int | None, max_token_length: str | None, outdir: Path,
) -> None:
    """Generate one image per combination of the axes' values and draw them as a labelled grid."""
    check_multipliers(network_weights, network_mul)
    check_output_folder(outdir)
    from adapters_core.generate.grid import GridRequest, make_grid, parse_axis
    from adapters_core.generate.images import GenerationSettings

    axes = [parse_axis(spec, flag) for spec, flag in ((x_axis, "--x"), (y_axis, "--y"), (z_axis, "--z")) if spec]
    base = base_job(negative_prompt, steps, scale, width, height, v_parameterization)
    if prompt:
        base = parse_prompt_line(prompt, base, "--prompt")
    request = GridRequest(
        axes=axes, base=base,
        settings=GenerationSettings(sampler=sampler, seed=seed if seed is not None else 1, clip_skip=clip_skip,
                                    max_token_length=int(max_token_length) if max_token_length else None),
        network_weights=list(network_weights), network_mul=list(network_mul) or None,
        block_weights=list(block_weights),
        title=title if title is not None else f"{model.name}: {prompt}".rstrip(": "),
    )
    result = make_grid(model_from_flags(model, v2, v_parameterization, tokenizer, device, dtype), model, request, outdir)
    click.echo(f"{result.grid}: grid of {len(result.images)} images")
