"""Aspect-ratio buckets, following kohya's ``make_bucket_resolutions`` and ``BucketManager``.

Images of one batch must share a size; buckets group images by a resolution close to their aspect
ratio so that little is cropped. The arithmetic (floor to steps, rounding, tie-breaking by the
first bucket in sorted order) is kohya's, so the same images land in the same buckets.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

from adapters_core.errors import ConfigError

log = logging.getLogger(__name__)

Reso = tuple[int, int]

#: The VAE downsamples by 8, so every trained size must be a multiple of it. kohya itself asserts
#: ``bucket_reso_steps % 64 == 0`` for SD1/2; we only require 8 so that tiny test models with
#: 32x32 or 64x64 images and steps of 8 or 16 can be trained.
LATENT_FACTOR = 8


def make_bucket_resolutions(max_reso: Reso, min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[Reso]:
    """All (width, height) buckets whose area fits ``max_reso``'s, sorted; kohya's algorithm."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def check_bucket_settings(resolution: Reso, enable_bucket: bool, min_reso: int, max_reso: int,
                          steps: int, where: str) -> tuple[int, int]:
    """Validate bucket options and return (min, max) rounded to ``steps`` as kohya does."""
    if not enable_bucket:
        if any(r % LATENT_FACTOR for r in resolution):
            raise ConfigError(f"{where}: 'resolution' {resolution} must be a multiple of {LATENT_FACTOR} "
                              f"in both dimensions when enable_bucket is false")
        return min_reso, max_reso
    if steps <= 0 or steps % LATENT_FACTOR:
        raise ConfigError(f"{where}: 'bucket_reso_steps' must be a positive multiple of {LATENT_FACTOR} "
                          f"(kohya requires 64 for SD1/2), got {steps}")
    if min_reso % steps:
        log.warning("%s: min_bucket_reso %d rounded down to a multiple of %d", where, min_reso, steps)
        min_reso -= min_reso % steps
    if max_reso % steps:
        log.warning("%s: max_bucket_reso %d rounded up to a multiple of %d", where, max_reso, steps)
        max_reso += steps - max_reso % steps
    if min_reso < steps:
        raise ConfigError(f"{where}: 'min_bucket_reso' must be at least bucket_reso_steps ({steps}), got {min_reso}")
    if min(resolution) < min_reso:
        raise ConfigError(f"{where}: 'min_bucket_reso' ({min_reso}) must not exceed the smaller side of "
                          f"'resolution' {resolution}")
    if max(resolution) > max_reso:
        raise ConfigError(f"{where}: 'max_bucket_reso' ({max_reso}) must not be below the larger side of "
                          f"'resolution' {resolution}")
    return min_reso, max_reso


class BucketSelector:
    """Chooses the bucket and the resize size of each image.

    Without bucketing there is a single bucket, ``resolution``, and images are not resized: kohya
    then crops them (randomly or around a face) and they may not be smaller than the resolution.
    """

    def __init__(self, resolution: Reso, enable_bucket: bool, min_reso: int, max_reso: int,
                 steps: int, no_upscale: bool) -> None:
        self.enable_bucket = enable_bucket
        self.no_upscale = enable_bucket and no_upscale
        self.steps = steps
        self.max_area = resolution[0] * resolution[1]
        if not enable_bucket:
            self.resos = [resolution]
        elif no_upscale:
            self.resos = []  # buckets follow the image sizes
        else:
            self.resos = make_bucket_resolutions(resolution, min_reso, max_reso, steps)
        self._aspects = [w / h for w, h in self.resos]

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> tuple[Reso, Reso, float]:
        """Return (bucket, resized size, bucket aspect ratio minus image aspect ratio)."""
        aspect = width / height
        if not self.enable_bucket:
            return self.resos[0], (width, height), self.resos[0][0] / self.resos[0][1] - aspect
        if not self.no_upscale:
            reso = (width, height)
            if reso not in self.resos:  # ties go to the first bucket, like numpy's argmin
                reso = self.resos[min(range(len(self.resos)), key=lambda i: abs(self._aspects[i] - aspect))]
            scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
            return reso, resized, reso[0] / reso[1] - aspect
        resized = (width, height)
        if width * height > self.max_area:
            # Shrink to the area, then round the side whose rounding distorts the aspect least.
            r_w = math.sqrt(self.max_area * aspect)
            r_h = self.max_area / r_w
            b_w = self._round(r_w)
            b_h = self._round(r_h)
            err_w = abs(b_w / max(self._round(b_w / aspect), 1) - aspect)
            err_h = abs(self._round(b_h * aspect) / max(b_h, 1) - aspect)
            resized = (b_w, int(b_w / aspect + 0.5)) if err_w < err_h else (int(b_h * aspect + 0.5), b_h)
        reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return reso, resized, reso[0] / max(reso[1], 1) - aspect

    def fixed_size_problem(self, size: Reso, random_crop: bool, has_face: bool) -> Optional[str]:
        """Why an image cannot be used without bucketing (kohya asserts this mid-training)."""
        if self.enable_bucket:
            return None
        (w, h), (rw, rh) = size, self.resos[0]
        if (w, h) == (rw, rh):
            return None
        if w < rw or h < rh:
            return f"is {w}x{h}, smaller than the resolution {rw}x{rh}; enable_bucket or resize it"
        if not (random_crop or has_face):
            return f"is {w}x{h}, larger than the resolution {rw}x{rh}; enable_bucket or random_crop"
        return None


def bucket_info(counts: dict[Reso, int], ar_errors: list[float]) -> dict:
    """kohya's ``ss_bucket_info``: counts include repeats, the aspect error does not."""
    buckets = {i: {"resolution": [w, h], "count": n} for i, ((w, h), n) in enumerate(sorted(counts.items()))}
    mean = sum(abs(e) for e in ar_errors) / len(ar_errors) if ar_errors else 0.0
    return {"buckets": buckets, "mean_img_ar_error": mean}


__all__ = ["LATENT_FACTOR", "make_bucket_resolutions", "check_bucket_settings", "BucketSelector", "bucket_info"]
