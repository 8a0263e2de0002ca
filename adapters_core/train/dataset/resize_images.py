"""Shrink training images to target areas, like kohya's ``tools/resize_images_to_resolution.py``.

Aspect-ratio bucketing trains small images at their own size, so adding shrunken copies of the
originals to a dataset gives it more scales. For every image in a folder and every target
resolution ``WxH`` this writes ``<stem>+WxH.<ext>``: the image scaled (aspect ratio kept) to an
area of at most ``W*H`` pixels, never enlarged, then centre-cropped so both sides divide by
``divisible_by``. Other files are copied unchanged, as kohya's tool does (hidden ones are left
out); with ``copy_associated_files`` an image's caption (``<stem>.txt``, ``<stem>.caption``, ...)
is also copied once per output as ``<stem>+WxH.txt``.

Differences from kohya's script: every resolution is computed from the original image (kohya
reuses the previous, already shrunken and cropped, result, so an ascending list would give wrong
sizes); an unreadable image is reported and skipped instead of stopping the run; existing outputs
are refused unless ``overwrite``; every file is written atomically.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from adapters_core.atomic import atomic_path, check_writable
from adapters_core.choices import IMAGE_EXTENSIONS
from adapters_core.errors import ConfigError, DatasetError, OutputExistsError
from adapters_core.progress import progress

DEFAULT_MAX_RESOLUTION = "512x512,384x384,256x256,128x128"

#: kohya's OpenCV interpolation names mapped to Pillow filters. Pillow's BOX averages every
#: source pixel a destination pixel covers, which is what cv2.INTER_AREA does when shrinking.
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "area": Image.Resampling.BOX,
    "cubic": Image.Resampling.BICUBIC,
    "lanczos4": Image.Resampling.LANCZOS,
}
DEFAULT_INTERPOLATION = "area"

_RESOLUTION_FORM = "WxH[,WxH...] with positive integers, e.g. 512x512,384x384"
_RESOLUTION_RE = re.compile(r"(\d+)[xX](\d+)")


@dataclass
class ResizeReport:
    """What a run did: images written, other files copied, and what was skipped and why.

    ``skipped_files`` holds one ``(source file, reason)`` entry per unreadable image and per
    output an image is too elongated for (a side would be 0 pixels).
    """

    written: int = 0
    copied: int = 0
    skipped_files: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    """Parse ``--max_resolution`` (``"512x512,384x384"``) into ``[(512, 512), (384, 384)]``."""
    resolutions = []
    for item in text.split(","):
        match = _RESOLUTION_RE.fullmatch(item.strip())
        if match is None:
            raise ConfigError(f"--max_resolution: expected {_RESOLUTION_FORM}, got {item.strip()!r}")
        resolutions.append((int(match[1]), int(match[2])))
    _check_resolutions(resolutions)
    return resolutions


def _check_resolutions(resolutions: Sequence[tuple[int, int]]) -> None:
    if not resolutions:
        raise ConfigError(f"--max_resolution: expected {_RESOLUTION_FORM}, got nothing")
    seen: set[tuple[int, int]] = set()
    for width, height in resolutions:
        if width < 1 or height < 1:
            raise ConfigError(f"--max_resolution: expected {_RESOLUTION_FORM}, got {width}x{height}")
        if (width, height) in seen:
            raise ConfigError(f"--max_resolution: {width}x{height} is given twice; list each resolution once")
        seen.add((width, height))


def scaled_size(width: int, height: int, max_area: int) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` image shrunk to an area of at most ``max_area``.

    Images already within ``max_area`` keep their size. Otherwise each side is
    ``floor(side * sqrt(max_area / area))``, as kohya computes it, but in integer arithmetic:
    ``floor(w * sqrt(A / (w*h))) == isqrt(w*A // h)``, so float rounding can never push the
    area above ``max_area``. A side is 0 for an image too elongated to fit ``max_area`` with its
    aspect ratio kept (kohya's script crashes there); callers skip it.
    """
    if width * height <= max_area:
        return width, height
    return math.isqrt(width * max_area // height), math.isqrt(height * max_area // width)


def crop_size(width: int, height: int, divisible_by: int) -> tuple[int, int]:
    """Each side rounded down to a multiple of ``divisible_by``; 0 when a side is shorter."""
    return width - width % divisible_by, height - height % divisible_by


def _load_rgb(path: Path) -> Image.Image:
    # load() forces a full decode so that truncated files fail here, not halfway through saving.
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def _copy(source: Path, target: Path, overwrite: bool) -> None:
    with atomic_path(target, overwrite) as tmp:
        shutil.copyfile(source, tmp)


def _warn(report: ResizeReport, path: Path, reason: str) -> None:
    report.skipped_files.append((path, reason))
    tqdm.write(f"warning: {path}: {reason}; skipped", file=sys.stderr)


def _plan(
    images: Sequence[Path],
    others: Sequence[Path],
    associated: dict[str, list[Path]],
    dst: Path,
    resolutions: Sequence[tuple[int, int]],
    extension: str,
) -> list[Path]:
    """Every output path of the run; refuse two sources that would write the same output."""
    sources: dict[Path, Path] = {}

    def add(target: Path, source: Path) -> None:
        if target in sources:
            raise DatasetError(
                f"{target}: both {sources[target]} and {source} would be written there; rename one of them"
            )
        sources[target] = source

    for path in others:
        add(dst / path.name, path)
    for path in images:
        for width, height in resolutions:
            add(dst / f"{path.stem}+{width}x{height}.{extension}", path)
            for extra in associated.get(path.stem, []):
                add(dst / f"{path.stem}+{width}x{height}{extra.suffix}", extra)
    return list(sources)


def resize_images(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    max_resolutions: Sequence[tuple[int, int]],
    *,
    divisible_by: int = 2,
    interpolation: str | None = None,
    save_as_png: bool = False,
    copy_associated_files: bool = False,
    overwrite: bool = False,
) -> ResizeReport:
    """Write every image of ``src_dir`` to ``dst_dir`` once per resolution in ``max_resolutions``.

    All outputs are planned and checked before anything is written: an existing output without
    ``overwrite`` raises :class:`OutputExistsError` and leaves ``dst_dir`` untouched. Images
    that cannot be decoded are reported on stderr and in the returned report, and skipped.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise ConfigError(f"src_dir: expected an existing folder of images, got {str(src)!r}")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"dst_dir: expected a folder (existing or new), got the file {str(dst)!r}")
    _check_resolutions(max_resolutions)
    if divisible_by < 1:
        raise ConfigError(f"--divisible_by: expected an integer >= 1, got {divisible_by}")
    interpolation = interpolation or DEFAULT_INTERPOLATION
    if interpolation not in INTERPOLATIONS:
        choices = ", ".join(INTERPOLATIONS)
        raise ConfigError(f"--interpolation: expected one of {choices}, got {interpolation!r}")
    resample = INTERPOLATIONS[interpolation]
    extension = "png" if save_as_png else "jpg"

    # Hidden files (.DS_Store, a temporary file of an interrupted run) are neither data nor captions.
    files = sorted(path for path in src.iterdir() if path.is_file() and not path.name.startswith("."))
    images = [path for path in files if path.suffix.lower() in IMAGE_EXTENSIONS]
    others = [path for path in files if path.suffix.lower() not in IMAGE_EXTENSIONS]
    associated: dict[str, list[Path]] = {}
    if copy_associated_files:
        for path in others:
            associated.setdefault(path.stem, []).append(path)
    outputs = _plan(images, others, associated, dst, max_resolutions, extension)
    if not overwrite:
        existing = [target for target in outputs if target.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise OutputExistsError(f"{existing[0]}: output exists{more}; pass --overwrite to replace it")
    check_writable(dst / "image", overwrite=True)  # before any work; the first write makes the folder

    report = ResizeReport()
    for path in others:
        _copy(path, dst / path.name, overwrite)
        report.copied += 1

    for path in progress(images, "resizing", total=len(images), unit="image"):
        try:
            original = _load_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            _warn(report, path, f"cannot read image ({exc})")
            continue
        for width, height in max_resolutions:
            scaled = scaled_size(original.width, original.height, width * height)
            crop_w, crop_h = crop_size(*scaled, divisible_by)
            if crop_w == 0 or crop_h == 0:
                _warn(report, path, f"{original.width}x{original.height} is too elongated for "
                      f"{width}x{height} with --divisible_by {divisible_by}: a side would be 0 pixels")
                continue
            image = original if scaled == original.size else original.resize(scaled, resample)
            left, top = (scaled[0] - crop_w) // 2, (scaled[1] - crop_h) // 2
            image = image.crop((left, top, left + crop_w, top + crop_h))
            stem = f"{path.stem}+{width}x{height}"
            with atomic_path(dst / f"{stem}.{extension}", overwrite) as tmp:
                if save_as_png:
                    image.save(tmp, format="PNG")
                else:
                    image.save(tmp, format="JPEG", quality=100)
            report.written += 1
            for extra in associated.get(path.stem, []):
                _copy(extra, dst / f"{stem}{extra.suffix}", overwrite)
                report.copied += 1
    return report
