"""Latent cache files in kohya's layout, plus a content key so that stale caches are never used.

kohya names a cache ``<stem>_{W:04d}x{H:04d}_sd.npz`` (original image size) and stores
``latents`` (unscaled fp32, [C, H/8, W/8]), ``original_size``, ``crop_ltrb`` and, with flip_aug,
``latents_flipped``. The name and the latent shape catch a changed size or bucket, but not an
image edited in place; so we also store the image's byte size, mtime and SHA-256. kohya ignores
the extra keys, and a cache without them (written by kohya) is treated as stale and rebuilt.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from adapters_core.atomic import atomic_path
from adapters_core.train.dataset.buckets import LATENT_FACTOR
from adapters_core.train.dataset.images import IMAGE_EXTENSIONS

Reso = tuple[int, int]
_CACHE_NAME = re.compile(r"^(?P<stem>.*)_(?P<w>\d{4,})x(?P<h>\d{4,})_sd\.npz$")
_KEY_BYTES, _KEY_MTIME, _KEY_SHA = "adapt_image_bytes", "adapt_image_mtime_ns", "adapt_image_sha256"


def cache_file_path(image_path: str | Path, original_w: int, original_h: int) -> Path:
    """kohya's cache name, beside the image."""
    path = Path(image_path)
    return path.with_name(f"{path.stem}_{original_w:04d}x{original_h:04d}_sd.npz")


def _image_of(cache_path: Path) -> Optional[Path]:
    """The image a cache file belongs to, found from its name."""
    match = _CACHE_NAME.match(cache_path.name)
    if match is None:
        return None
    for ext in IMAGE_EXTENSIONS:
        for candidate in (ext, ext.upper()):
            image = cache_path.with_name(match["stem"] + candidate)
            if image.is_file():
                return image
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_latents_npz(path: str | Path, latents: torch.Tensor, original_size: Sequence[int],
                     crop_ltrb: Sequence[int], flipped: Optional[torch.Tensor] = None, *,
                     image_path: Optional[str | Path] = None) -> None:
    """Write a cache atomically. ``image_path`` defaults to the image named by the cache file."""
    path = Path(path)
    image = Path(image_path) if image_path is not None else _image_of(path)
    if image is None or not image.is_file():
        raise FileNotFoundError(f"{path}: cannot find the image this cache belongs to; pass image_path")
    stat = image.stat()
    arrays = {
        "latents": latents.detach().float().cpu().numpy(),
        "original_size": np.asarray(original_size, dtype=np.int64),
        "crop_ltrb": np.asarray(crop_ltrb, dtype=np.int64),
        _KEY_BYTES: np.int64(stat.st_size),
        _KEY_MTIME: np.int64(stat.st_mtime_ns),
        _KEY_SHA: np.str_(_sha256(image)),
    }
    if flipped is not None:
        arrays["latents_flipped"] = flipped.detach().float().cpu().numpy()
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _same_image(npz: np.lib.npyio.NpzFile, image: Path) -> bool:
    """Cheap checks first: byte size, then mtime; hash only when the file was touched."""
    if not all(k in npz for k in (_KEY_BYTES, _KEY_MTIME, _KEY_SHA)):
        return False
    stat = image.stat()
    if int(npz[_KEY_BYTES]) != stat.st_size:
        return False
    return int(npz[_KEY_MTIME]) == stat.st_mtime_ns or str(npz[_KEY_SHA]) == _sha256(image)


def load_latents_npz(path: str | Path, expected_reso: Reso, flipped: bool = False, *,
                     image_path: Optional[str | Path] = None) -> Optional[torch.Tensor]:
    """The cached latents for bucket ``expected_reso`` (W, H), or None when missing or stale.

    Stale means: unreadable, another bucket size, another original size than the file name says,
    no flipped latents when ``flipped`` is asked for, or an image whose content changed.
    """
    path = Path(path)
    image = Path(image_path) if image_path is not None else _image_of(path)
    if not path.is_file() or image is None or not image.is_file():
        return None
    expected_hw = (expected_reso[1] // LATENT_FACTOR, expected_reso[0] // LATENT_FACTOR)
    key = "latents_flipped" if flipped else "latents"
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not all(k in npz for k in (key, "original_size", "crop_ltrb")):
                return None
            latents = npz[key]
            if latents.ndim != 3 or tuple(latents.shape[1:]) != expected_hw:
                return None
            match = _CACHE_NAME.match(path.name)
            if match and [int(match["w"]), int(match["h"])] != npz["original_size"].tolist():
                return None
            if not _same_image(npz, image):
                return None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))


__all__ = ["cache_file_path", "save_latents_npz", "load_latents_npz"]
