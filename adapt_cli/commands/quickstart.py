"""``adapt quickstart``: a first LoRA in seconds, offline, on the bundled tiny model."""

from __future__ import annotations

from pathlib import Path

import click

from adapt_cli.options import POSITIVE_INT, SEED, kohya_option, overwrite_option


@click.command("quickstart")
@kohya_option(
    "--output_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Work folder: model/, data/ and output/ are written there (default adapt-quickstart, or "
    "adapt-quickstart-<family> for another --model_family).",
)
@kohya_option(
    "--model_family",
    default="tiny",
    show_default=True,
    help="The demo model to train: tiny (SD 1.x-style) or tiny_sdxl (SDXL-shaped: two text encoders, "
    "size conditioning).",
)
@kohya_option("--max_train_steps", type=POSITIVE_INT, default=None, help="Training steps (default 120).")
@kohya_option(
    "--learning_rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate (default 2e-3)."
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed.")
@overwrite_option()
def quickstart(
    output_dir: Path | None,
    model_family: str,
    max_train_steps: int | None,
    learning_rate: float | None,
    seed: int,
    overwrite: bool,
) -> None:
    """Write the tiny demo model and dataset, train a LoRA on them, and show it learned.

    Nothing is downloaded. The loss is the model's denoising error on the training images with
    fixed noise, without and with the trained LoRA.
    """
    from adapters_core.train.quickstart import QUICKSTART_LEARNING_RATE, QUICKSTART_STEPS, run_quickstart

    if output_dir is None:
        output_dir = Path("adapt-quickstart" if model_family == "tiny" else f"adapt-quickstart-{model_family}")
    result = run_quickstart(
        output_dir,
        steps=max_train_steps or QUICKSTART_STEPS,
        seed=seed,
        overwrite=overwrite,
        model_family=model_family,
        learning_rate=learning_rate or QUICKSTART_LEARNING_RATE,
    )
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s")
    click.echo(
        f"denoising loss on the training images: {result.loss_before:.4f} without the LoRA, "
        f"{result.loss_after:.4f} with it"
    )
    click.echo(f"LoRA written to {result.adapter}")
    for path in result.report:
        click.echo(f"training report: {path}")
    click.echo(f"checkpoints by multiplier: {result.grid}")
    click.echo(
        f"next: adapt train --pretrained_model_name_or_path {output_dir / 'model'} "
        f"--train_data_dir {output_dir / 'data' / 'img'} --caption_extension .txt --resolution 32 "
        f"--output_dir {output_dir / 'output'} --max_train_steps 50 --learning_rate 1e-3"
    )
