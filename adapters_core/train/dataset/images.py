"""Pixel operations: opening, resizing and cropping to a bucket, and kohya's augmentations.

Randomness always comes from a ``random.Random`` passed in, so a batch is a pure function of
(seed, epoch, batch index) and tests are deterministic.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from adapters_core.choices import IMAGE_EXTENSIONS
from adapters_core.errors import DatasetError

Reso = tuple[int, int]
LTRB = tuple[int, int, int, int]



def is_image_file(path: Path) -> bool:
    """kohya's extension list, matched case-insensitively."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def probe_image(path: Path) -> Reso:
    """Return (width, height) after checking that the file is a readable image.

    ``verify`` catches truncated or corrupt headers (and PNG checksum errors) without decoding
    the pixels, so a large dataset is checked in seconds before any model is loaded.
    """
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return size


def load_image(path: Path, alpha: bool = False) -> Image.Image:
    """Open and decode an image as RGB (RGBA when an alpha mask is needed)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGBA" if alpha else "RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def face_from_name(path: Path) -> Optional[tuple[int, int, int, int]]:
    """kohya's face-crop files end in ``_<cx>_<cy>_<w>_<h>``; None when they do not."""
    tokens = path.stem.split("_")
    if len(tokens) < 5:
        return None
    try:
        cx, cy, w, h = (int(t) for t in tokens[-4:])
    except ValueError:
        return None
    return (cx, cy, w, h) if cx > 0 else None


def resize_and_crop(image: Image.Image, resized: Reso, bucket: Reso, random_crop: bool,
                    rng: random.Random) -> tuple[Image.Image, LTRB]:
    """Resize to ``resized`` (covering the bucket), then crop to ``bucket``.

    The crop box is returned in resized-image coordinates (left, top, right, bottom).
    Like kohya: box filter when shrinking, Lanczos when enlarging.
    """
    if image.size != resized:
        shrink = image.width >= resized[0] and image.height >= resized[1]
        image = image.resize(resized, Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
    offsets = []
    for length, target in zip(resized, bucket):
        extra = length - target
        offsets.append(rng.randint(0, extra) if random_crop and extra > 0 else extra // 2)
    box = (offsets[0], offsets[1], offsets[0] + bucket[0], offsets[1] + bucket[1])
    return image.crop(box), box


def face_crop(image: Image.Image, face: tuple[int, int, int, int], target: Reso,
              face_range: tuple[float, float], random_crop: bool, rng: random.Random) -> tuple[Image.Image, LTRB]:
    """kohya's ``crop_target``: scale so the face spans ``face_range`` of the short side, crop around it."""
    width, height = image.size
    if (width, height) == target:
        return image, (0, 0, width, height)
    cx, cy, fw, fh = face
    face_size = max(fw, fh)
    size = min(target)
    min_scale = max(target[1] / height, target[0] / width)
    min_scale = min(1.0, max(min_scale, size / (face_size * face_range[1])))
    max_scale = min(1.0, max(min_scale, size / (face_size * face_range[0])))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    new_w, new_h = int(width * scale + 0.5), int(height * scale + 0.5)
    image = image.resize((new_w, new_h), Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS)
    starts = []
    axes = ((target[0], new_w, int(cx * scale + 0.5)), (target[1], new_h, int(cy * scale + 0.5)))
    for target_len, length, centre in axes:
        p = centre - target_len // 2
        if random_crop:  # shift around the face, more often near it, to include background
            spread = max(length - centre, centre)
            p += rng.randint(0, spread) + rng.randint(0, spread) - spread
        elif face_range[0] != face_range[1] and face_size > size // 10 and face_size >= 40:
            p += rng.randint(-face_size // 20, face_size // 20)
        starts.append(max(0, min(p, length - target_len)))
    box = (starts[0], starts[1], starts[0] + target[0], starts[1] + target[1])
    return image.crop(box), box


def color_aug(image: Image.Image, rng: random.Random) -> Image.Image:
    """kohya's colour augmentation: with p=1/3, a hue shift of up to ±16° or a gamma of 0.95-1.05."""
    if rng.random() > 0.33:
        return image
    if rng.random() > 0.5:
        hsv = np.array(image.convert("HSV"), dtype=np.int16)
        shift = round(rng.uniform(-8, 8) / 180 * 256)  # kohya's ±8 is in OpenCV's 0-180 hue units
        hsv[..., 0] = (hsv[..., 0] + shift) % 256
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    gamma = rng.uniform(0.95, 1.05)
    arr = np.clip(np.asarray(image, dtype=np.float32) ** gamma, 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image → float tensor [3, H, W] in [-1, 1], the VAE's input range."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def alpha_to_mask(image: Image.Image) -> torch.Tensor:
    """Alpha channel → float mask [H, W] in [0, 1]; fully opaque when there is no alpha."""
    if image.mode != "RGBA":
        return torch.ones(image.height, image.width)
    return torch.from_numpy(np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0)


__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "probe_image", "load_image", "face_from_name",
           "resize_and_crop", "face_crop", "color_aug", "to_tensor", "alpha_to_mask"]
