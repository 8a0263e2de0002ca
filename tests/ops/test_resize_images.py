"""Tests of the image resize tool (kohya's ``tools/resize_images_to_resolution.py``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from adapt_cli.commands.resize_images import resize_images as resize_command
from adapters_core.errors import ConfigError, DatasetError, OutputExistsError
from adapters_core.train.dataset.resize_images import (
    INTERPOLATIONS,
    parse_resolutions,
    resize_images,
    scaled_size,
)


def make_image(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=(200, 100, 50) if mode == "RGB" else 128).save(path)
    return path


def sizes(folder: Path) -> dict[str, tuple[int, int]]:
    result = {}
    for path in folder.iterdir():
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                result[path.name] = image.size
    return result


@pytest.mark.parametrize("size", [(1000, 700), (700, 1000), (1023, 1023), (3001, 997)])
@pytest.mark.parametrize("divisible_by", [1, 2, 8, 64])
def test_area_within_target_and_close_to_it(tmp_path: Path, size: tuple[int, int], divisible_by: int) -> None:
    make_image(tmp_path / "src" / "photo.png", size)
    resolutions = [(512, 512), (384, 384), (256, 256), (128, 128)]
    report = resize_images(tmp_path / "src", tmp_path / "dst", resolutions, divisible_by=divisible_by)
    assert report.written == 4 and report.skipped == 0
    out = sizes(tmp_path / "dst")
    width, height = size
    for res_w, res_h in resolutions:
        area = res_w * res_h
        out_w, out_h = out[f"photo+{res_w}x{res_h}.jpg"]
        assert out_w * out_h <= area
        assert out_w % divisible_by == 0 and out_h % divisible_by == 0
        # Exact sides are x, y with x*y == area; flooring and the crop take < divisible_by each.
        x, y = math.sqrt(width * area / height), math.sqrt(height * area / width)
        assert out_w >= x - divisible_by and out_h >= y - divisible_by
        assert out_w * out_h >= (x - divisible_by) * (y - divisible_by)


def test_scaled_size_is_exact_and_never_enlarges() -> None:
    assert scaled_size(1024, 1024, 512 * 512) == (512, 512)
    assert scaled_size(100, 60, 512 * 512) == (100, 60)
    assert scaled_size(100000, 1, 128 * 128) == (40477, 0)  # too elongated: the caller skips it
    for width in range(300, 2000, 37):
        for height in (301, 777, 1999):
            new_w, new_h = scaled_size(width, height, 256 * 256)
            assert new_w * new_h <= 256 * 256


def test_small_image_not_enlarged_only_cropped(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "small.png", (101, 61))
    resize_images(tmp_path / "src", tmp_path / "dst", [(512, 512), (64, 64)])
    out = sizes(tmp_path / "dst")
    assert out["small+512x512.jpg"] == (100, 60)
    assert out["small+64x64.jpg"][0] * out["small+64x64.jpg"][1] <= 64 * 64


def test_every_resolution_is_computed_from_the_original(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "a.png", (1000, 1000))
    resize_images(tmp_path / "src", tmp_path / "dst", [(128, 128), (512, 512)])
    out = sizes(tmp_path / "dst")
    assert out == {"a+128x128.jpg": (128, 128), "a+512x512.jpg": (512, 512)}


def test_centre_crop_keeps_the_middle(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 16), (255, 255, 255))
    for x in (0, 1, 18, 19):  # cropping 20 to 16 columns removes two on each side
        for y in range(16):
            image.putpixel((x, y), (0, 0, 0))
    (tmp_path / "src").mkdir()
    image.save(tmp_path / "src" / "c.png")
    resize_images(tmp_path / "src", tmp_path / "dst", [(512, 512)], divisible_by=8, save_as_png=True)
    with Image.open(tmp_path / "dst" / "c+512x512.png") as out:
        assert out.size == (16, 16)
        assert {out.getpixel((x, y)) for x in range(16) for y in range(16)} == {(255, 255, 255)}


def test_names_and_formats(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "one.png", (600, 600))
    make_image(tmp_path / "src" / "TWO.JPG", (600, 600))
    make_image(tmp_path / "src" / "three.webp", (600, 600))
    make_image(tmp_path / "src" / "four.bmp", (600, 600), mode="L")
    resize_images(tmp_path / "src", tmp_path / "jpg", [(256, 256), (64, 32)])
    assert sorted(p.name for p in (tmp_path / "jpg").iterdir()) == sorted(
        f"{stem}+{res}.jpg" for stem in ("one", "TWO", "three", "four") for res in ("256x256", "64x32")
    )
    with Image.open(tmp_path / "jpg" / "one+256x256.jpg") as image:
        assert image.format == "JPEG" and image.mode == "RGB"

    resize_images(tmp_path / "src", tmp_path / "png", [(256, 256)], save_as_png=True)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "TWO+256x256.png", "four+256x256.png", "one+256x256.png", "three+256x256.png"
    ]
    with Image.open(tmp_path / "png" / "four+256x256.png") as image:
        assert image.format == "PNG" and image.mode == "RGB"


@pytest.mark.parametrize("interpolation", [None, *INTERPOLATIONS])
def test_interpolations_give_the_same_size(tmp_path: Path, interpolation: str | None) -> None:
    make_image(tmp_path / "src" / "a.png", (999, 555))
    resize_images(
        tmp_path / "src", tmp_path / "dst", [(256, 256)], divisible_by=1, interpolation=interpolation
    )
    assert sizes(tmp_path / "dst") == {"a+256x256.jpg": scaled_size(999, 555, 256 * 256)}


def test_area_is_box_filter() -> None:
    assert INTERPOLATIONS == {
        "area": Image.Resampling.BOX, "cubic": Image.Resampling.BICUBIC, "lanczos4": Image.Resampling.LANCZOS
    }


def test_associated_files_copied_with_new_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_image(src / "a.png", (800, 800))
    (src / "a.txt").write_text("a cat")
    (src / "a.caption").write_text("a cat, sitting")
    (src / "notes.md").write_text("not a caption")
    (src / ".DS_Store").write_text("junk")
    report = resize_images(src, tmp_path / "dst", [(512, 512), (256, 256)], copy_associated_files=True)
    dst = tmp_path / "dst"
    for res in ("512x512", "256x256"):
        assert (dst / f"a+{res}.txt").read_text() == "a cat"
        assert (dst / f"a+{res}.caption").read_text() == "a cat, sitting"
    # Files that are not images are copied as they are, as kohya's tool does; hidden ones are not.
    assert (dst / "a.txt").read_text() == "a cat"
    assert (dst / "notes.md").read_text() == "not a caption"
    assert not (dst / ".DS_Store").exists()
    assert not (dst / "a.png").exists()
    assert report.written == 2 and report.copied == 3 + 4


def test_associated_files_not_copied_without_flag(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "a.png", (300, 300))
    (tmp_path / "src" / "a.txt").write_text("a cat")
    resize_images(tmp_path / "src", tmp_path / "dst", [(128, 128)])
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a+128x128.jpg", "a.txt"]


def test_unreadable_image_skipped_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_image(src / "good.png", (300, 300))
    (src / "bad.png").write_bytes(b"not an image at all")
    (src / "bad.txt").write_text("caption of bad")
    result = CliRunner().invoke(
        resize_command, [str(src), str(tmp_path / "dst"), "--max_resolution", "128x128,64x64",
                         "--copy_associated_files"],
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "bad.png" in warnings[0]
    names = sorted(p.name for p in (tmp_path / "dst").iterdir())
    assert names == ["bad.txt", "good+128x128.jpg", "good+64x64.jpg"]


def test_truncated_image_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_image(src / "whole.jpg", (300, 300))
    data = (src / "whole.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 2])
    report = resize_images(src, tmp_path / "dst", [(128, 128)])
    assert report.written == 1
    assert [path.name for path, _ in report.skipped_files] == ["cut.jpg"]


def test_image_too_thin_is_skipped(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "line.png", (1, 300))
    make_image(tmp_path / "src" / "strip.png", (20000, 1))
    report = resize_images(tmp_path / "src", tmp_path / "dst", [(128, 128)], divisible_by=2)
    assert report.written == 0
    assert [(path.name, "128x128" in reason) for path, reason in report.skipped_files] == [
        ("line.png", True), ("strip.png", True)
    ]


def test_existing_output_refused_and_nothing_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_image(src / "a.png", (600, 600))
    make_image(src / "b.png", (600, 600))
    (src / "a.txt").write_text("caption")
    dst.mkdir()
    (dst / "b+256x256.jpg").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"b\+256x256\.jpg"):
        resize_images(src, dst, [(512, 512), (256, 256)], copy_associated_files=True)
    assert [p.name for p in dst.iterdir()] == ["b+256x256.jpg"]
    assert (dst / "b+256x256.jpg").read_bytes() == b"old"

    result = CliRunner().invoke(resize_command, [str(src), str(dst), "--max-resolution", "512x512,256x256"])
    assert isinstance(result.exception, OutputExistsError)

    result = CliRunner().invoke(
        resize_command, [str(src), str(dst), "--max-resolution", "512x512,256x256", "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    assert sizes(dst)["b+256x256.jpg"] == (256, 256)
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_two_sources_for_one_output_refused(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "a.png", (300, 300))
    make_image(tmp_path / "src" / "a.jpg", (300, 300))
    with pytest.raises(DatasetError, match="a.jpg"):
        resize_images(tmp_path / "src", tmp_path / "dst", [(128, 128)])
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("text", ["512x", "x512", "512", "512x512,", "512x0", "axb", "512x512,512x512"])
def test_bad_max_resolution(tmp_path: Path, text: str) -> None:
    make_image(tmp_path / "src" / "a.png", (300, 300))
    args = [str(tmp_path / "src"), str(tmp_path / "dst"), "--max_resolution", text]
    result = CliRunner().invoke(resize_command, args)
    assert isinstance(result.exception, ConfigError)
    assert "--max_resolution" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "dst").exists()


def test_parse_resolutions() -> None:
    assert parse_resolutions("512x512, 384x256 ,128X128") == [(512, 512), (384, 256), (128, 128)]


def test_bad_divisible_by_and_missing_src(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "a.png", (300, 300))
    args = [str(tmp_path / "src"), str(tmp_path / "dst"), "--divisible-by", "0"]
    result = CliRunner().invoke(resize_command, args)
    assert isinstance(result.exception, ConfigError) and "--divisible_by" in str(result.exception)
    result = CliRunner().invoke(resize_command, [str(tmp_path / "nope"), str(tmp_path / "dst")])
    assert isinstance(result.exception, ConfigError) and "nope" in str(result.exception)
    assert not (tmp_path / "dst").exists()


def test_cli_defaults_and_dashed_spellings(tmp_path: Path) -> None:
    make_image(tmp_path / "src" / "a.png", (700, 700))
    (tmp_path / "src" / "a.txt").write_text("cap")
    result = CliRunner().invoke(
        resize_command,
        [str(tmp_path / "src"), str(tmp_path / "dst"), "--save-as-png", "--copy-associated-files",
         "--interpolation", "lanczos4"],
    )
    assert result.exit_code == 0, result.output
    assert sizes(tmp_path / "dst") == {
        "a+512x512.png": (512, 512), "a+384x384.png": (384, 384),
        "a+256x256.png": (256, 256), "a+128x128.png": (128, 128),
    }
    assert (tmp_path / "dst" / "a+128x128.txt").read_text() == "cap"
    assert resize_command.name == "resize-images"
