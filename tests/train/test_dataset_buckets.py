"""Bucket resolutions, bucket choice and crops, following kohya's arithmetic."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from adapters_core.errors import ConfigError
from adapters_core.train.dataset import BucketSelector, bucket_info, make_bucket_resolutions
from adapters_core.train.dataset.buckets import check_bucket_settings
from adapters_core.train.dataset.images import resize_and_crop


def test_buckets_for_512() -> None:
    # Worked by hand from the algorithm: for w = 256..1024 step 64, h = min(1024, floor(262144 // w / 64) * 64).
    expected = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640),
                (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256),
                (896, 256), (960, 256), (1024, 256)]
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == expected


def test_buckets_for_tiny_resolution() -> None:
    resos = make_bucket_resolutions((64, 64), 32, 128, 16)
    assert (64, 64) in resos and (32, 128) in resos and (128, 32) in resos
    assert all(w % 16 == 0 and h % 16 == 0 and w * h <= 64 * 64 for w, h in resos)


def test_select_exact_match_and_nearest_aspect() -> None:
    selector = BucketSelector((512, 512), True, 256, 1024, 64, False)
    assert selector.select(384, 640)[:2] == ((384, 640), (384, 640))
    # 1000x600 has the aspect of 640x384 exactly: scaled by width.
    assert selector.select(1000, 600)[:2] == ((640, 384), (640, 384))
    # 800x600 (1.333) is nearest 576x448 (1.286); wider than the bucket → scaled by height.
    bucket, resized, error = selector.select(800, 600)
    assert bucket == (576, 448) and resized == (597, 448)
    assert error == pytest.approx(576 / 448 - 800 / 600)


def test_centre_and_random_crop() -> None:
    image = Image.new("RGB", (800, 600))
    cropped, box = resize_and_crop(image, (597, 448), (576, 448), False, random.Random(0))
    assert cropped.size == (576, 448) and box == (10, 0, 586, 448)
    boxes = {resize_and_crop(image, (597, 448), (576, 448), True, random.Random(s))[1] for s in range(20)}
    assert len(boxes) > 1 and all(0 <= b[0] <= 21 and b[2] - b[0] == 576 for b in boxes)


def test_no_upscale_buckets_follow_image_size() -> None:
    selector = BucketSelector((64, 64), True, 32, 128, 16, True)
    assert selector.select(50, 40)[:2] == ((48, 32), (50, 40))  # never enlarged, floored to steps
    assert selector.select(128, 64)[:2] == ((64, 32), (64, 32))  # shrunk to the area first


def test_without_buckets_images_are_cropped_not_resized() -> None:
    selector = BucketSelector((64, 64), False, 0, 0, 0, False)
    assert selector.select(80, 64)[:2] == ((64, 64), (80, 64))
    assert selector.fixed_size_problem((64, 64), False, False) is None
    assert "smaller" in (selector.fixed_size_problem((48, 64), True, False) or "")
    assert "random_crop" in (selector.fixed_size_problem((80, 64), False, False) or "")
    assert selector.fixed_size_problem((80, 64), True, False) is None


def test_check_bucket_settings() -> None:
    assert check_bucket_settings((512, 512), True, 250, 1000, 64, "x") == (192, 1024)
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_bucket_settings((64, 64), True, 32, 128, 12, "x")
    with pytest.raises(ConfigError, match="max_bucket_reso"):
        check_bucket_settings((256, 64), True, 32, 128, 16, "x")
    with pytest.raises(ConfigError, match="at least bucket_reso_steps"):
        check_bucket_settings((64, 64), True, 8, 128, 16, "x")
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_bucket_settings((60, 60), False, 0, 0, 0, "x")


def test_bucket_info_format() -> None:
    info = bucket_info({(64, 32): 3, (32, 64): 5}, [0.5, -0.25])
    assert info == {"buckets": {0: {"resolution": [32, 64], "count": 5}, 1: {"resolution": [64, 32], "count": 3}},
                    "mean_img_ar_error": 0.375}
