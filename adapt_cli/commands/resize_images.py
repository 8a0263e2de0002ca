"""``adapt resize-images``: kohya's ``tools/resize_images_to_resolution.py`` as a command.

Every option takes kohya's spelling (``--max_resolution``) and the dashed one
(``--max-resolution``). Errors (:class:`adapters_core.errors.AdaptError`) propagate to the main
CLI, which prints them as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from adapters_core.train.dataset.resize_images import (
    DEFAULT_INTERPOLATION,
    DEFAULT_MAX_RESOLUTION,
    INTERPOLATIONS,
    parse_resolutions,
)
from adapters_core.train.dataset.resize_images import resize_images as resize_folder


@click.command("resize-images")
@click.argument("src_dir", type=click.Path(path_type=Path))
@click.argument("dst_dir", type=click.Path(path_type=Path))
@click.option(
    "--max_resolution", "--max-resolution", "max_resolution",
    default=DEFAULT_MAX_RESOLUTION, show_default=True,
    help="Comma-separated target resolutions WxH; each output has at most W*H pixels.",
)
@click.option(
    "--save_as_png", "--save-as-png", "save_as_png", is_flag=True,
    help="Write PNG instead of JPEG (quality 100).",
)
@click.option(
    "--copy_associated_files", "--copy-associated-files", "copy_associated_files", is_flag=True,
    help="Copy files with an image's name and another extension (captions) once per output, renamed.",
)
@click.option(
    "--divisible_by", "--divisible-by", "divisible_by", type=int, default=2, show_default=True,
    help="Centre-crop each output so both sides are multiples of this.",
)
@click.option(
    "--interpolation", "interpolation", type=click.Choice(list(INTERPOLATIONS)),
    default=DEFAULT_INTERPOLATION, show_default=True, help="Filter for shrinking.",
)
@click.option("--overwrite", is_flag=True, help="Replace outputs that already exist.")
def resize_images(
    src_dir: Path,
    dst_dir: Path,
    max_resolution: str,
    save_as_png: bool,
    copy_associated_files: bool,
    divisible_by: int,
    interpolation: str,
    overwrite: bool,
) -> None:
    """Shrink every image in SRC_DIR to each --max_resolution area, writing <name>+WxH to DST_DIR.

    Images are never enlarged; aspect ratio is kept. Other files are copied unchanged.
    """
    report = resize_folder(
        src_dir,
        dst_dir,
        parse_resolutions(max_resolution),
        divisible_by=divisible_by,
        interpolation=interpolation,
        save_as_png=save_as_png,
        copy_associated_files=copy_associated_files,
        overwrite=overwrite,
    )
    click.echo(
        f"{dst_dir}: wrote {report.written} images, copied {report.copied} files, "
        f"skipped {report.skipped}"
    )
