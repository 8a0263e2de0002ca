"""``--cache_latents`` / ``--cache_latents_to_disk``: encode every training image once.

The cache is the dataset's ``latents_provider``: it is created empty (so the dataset can be
checked before any model is loaded) and filled with the VAE before training. With
``to_disk`` each image's latents live in kohya's ``<stem>_WWWWxHHHH_sd.npz`` next to it and are
reused by later runs; the dataset package's npz helpers decide when a file is stale (another
bucket size, an edited image), and stale files are re-encoded and rewritten.

Adapter (to be removed when the dataset package takes the VAE's downsampling factor): the
dataset helpers assume SD's factor 8, while the tiny test model's VAE downsamples by 2.
:class:`CachedLatentsDataset` skips the dataset's factor-8 shape check (the cache itself
guarantees the shape) and :func:`npz_bucket` gives ``load_latents_npz`` the bucket size whose
/8 equals this VAE's latent size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adapters_core.progress import progress_bar
from adapters_core.train.dataset import (
    LATENT_FACTOR,
    ImageDataset,
    cache_file_path,
    load_latents_npz,
    save_latents_npz,
)
from adapters_core.train.dataset.dataset import ImageRecord

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

log = logging.getLogger(__name__)

Reso = tuple[int, int]
Key = tuple[Path, Reso, bool]


def vae_factor(vae: AutoencoderKL) -> int:
    """How much the VAE downsamples: 2 per encoder level after the first (8 for SD)."""
    return int(2 ** (len(vae.config["block_out_channels"]) - 1))


def npz_bucket(reso: Reso, factor: int) -> Reso:
    """The bucket size the factor-8 npz helpers must be told so that they expect our latent size."""
    return (reso[0] * LATENT_FACTOR // factor, reso[1] * LATENT_FACTOR // factor)


class CachedLatentsDataset(ImageDataset):
    """ImageDataset whose cached latents may come from a VAE with another factor than 8."""

    def _latents(self, record: ImageRecord, reso: Reso, flipped: bool) -> torch.Tensor:
        assert self.latents_provider is not None
        return self.latents_provider(record.path, reso, flipped)


@dataclass
class CacheStats:
    loaded: int = 0
    encoded: int = 0


def centre_crop_box(record: ImageRecord) -> tuple[int, int, int, int]:
    """Crop box (in the resized image) of the centre crop that cached latents are made from."""
    (rw, rh), (bw, bh) = record.resized_size, record.bucket_reso
    left, top = (rw - bw) // 2, (rh - bh) // 2
    return left, top, left + bw, top + bh


class LatentCache:
    """Unscaled VAE latents [C, H/8, W/8] keyed by (image, bucket (W, H), flipped)."""

    def __init__(self, to_disk: bool = False) -> None:
        self.to_disk = to_disk
        self.latents: dict[Key, torch.Tensor] = {}
        self.factor = LATENT_FACTOR

    def __call__(self, image_path: Path, bucket_reso: Reso, flipped: bool) -> torch.Tensor:
        return self.latents[(Path(image_path), tuple(bucket_reso), bool(flipped))]  # type: ignore[index]

    def _load(self, record: ImageRecord, flips: tuple[bool, ...]) -> bool:
        npz = cache_file_path(record.path, *record.original_size)
        bucket = npz_bucket(record.bucket_reso, self.factor)
        found = {flip: load_latents_npz(npz, bucket, flipped=flip, image_path=record.path) for flip in flips}
        if any(value is None for value in found.values()):
            return False
        for flip, value in found.items():
            self.latents[(record.path, record.bucket_reso, flip)] = value  # type: ignore[assignment]
        return True

    @torch.no_grad()
    def fill(
        self,
        dataset: ImageDataset,
        vae: AutoencoderKL,
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        write_files: bool,
        show_progress: bool = True,
    ) -> CacheStats:
        """Load valid cache files, encode the rest (in batches of one bucket size), write files."""
        stats = CacheStats()
        self.factor = vae_factor(vae)
        todo: dict[Reso, list[tuple[ImageRecord, bool]]] = {}
        seen: set[tuple[Path, Reso]] = set()
        for record in dataset.records:
            if (record.path, record.bucket_reso) in seen:
                continue
            seen.add((record.path, record.bucket_reso))
            flips = (False, True) if record.subset.flip_aug else (False,)
            if self.to_disk and self._load(record, flips):
                stats.loaded += 1
                continue
            todo.setdefault(record.bucket_reso, []).extend((record, flip) for flip in flips)
        total = sum(len(items) for items in todo.values())
        bar = progress_bar(total, "caching latents", unit="img", disable=not show_progress or total == 0)
        encoded: dict[Path, dict[bool, torch.Tensor]] = {}
        records: dict[Path, ImageRecord] = {}
        for reso, items in todo.items():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                pixels = torch.stack([dataset.pixels(record.path, reso, flip) for record, flip in chunk])
                latents = vae.encode(pixels.to(device, dtype)).latent_dist.sample().float().cpu()
                for (record, flip), value in zip(chunk, latents, strict=False):
                    self.latents[(record.path, reso, flip)] = value
                    encoded.setdefault(record.path, {})[flip] = value
                    records[record.path] = record
                bar.update(len(chunk))
        bar.close()
        stats.encoded = len(encoded)
        if self.to_disk and write_files:
            for path, values in encoded.items():
                record = records[path]
                save_latents_npz(
                    cache_file_path(path, *record.original_size),
                    values[False],
                    record.original_size,
                    centre_crop_box(record),
                    values.get(True),
                    image_path=path,
                )
        log.info("latents: %d images from cache files, %d encoded", stats.loaded, stats.encoded)
        return stats
