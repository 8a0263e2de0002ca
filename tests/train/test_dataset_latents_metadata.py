"""Latent cache files, dataset metadata keys and the demo dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapters_core.train.dataset import (
    ImageDataset,
    cache_file_path,
    config_from_folders,
    dataset_metadata,
    load_dataset_config,
    load_latents_npz,
    save_latents_npz,
    write_demo_dataset,
)


def cached_image(tmp_path: Path) -> tuple[Path, Path, torch.Tensor]:
    image = tmp_path / "cat.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(image)
    npz = cache_file_path(image, 64, 48)
    latents = torch.randn(4, 6, 8)
    save_latents_npz(npz, latents, (64, 48), (0, 0, 64, 48), flipped=latents.flip(-1))
    return image, npz, latents


def test_cache_file_name_is_kohyas(tmp_path: Path) -> None:
    assert cache_file_path(tmp_path / "a.b.png", 64, 48) == tmp_path / "a.b_0064x0048_sd.npz"
    assert cache_file_path("x/img.jpg", 12345, 7).name == "img_12345x0007_sd.npz"


def _load(npz: Path, flipped: bool = False) -> torch.Tensor:
    latents = load_latents_npz(npz, (64, 48), flipped=flipped)
    assert latents is not None
    return latents


def test_latents_round_trip_and_kohya_keys(tmp_path: Path) -> None:
    _, npz, latents = cached_image(tmp_path)
    assert torch.equal(_load(npz), latents)
    assert torch.equal(_load(npz, flipped=True), latents.flip(-1))
    with np.load(npz) as data:
        assert {"latents", "original_size", "crop_ltrb", "latents_flipped"} <= set(data.files)
        assert data["original_size"].tolist() == [64, 48]


def test_other_bucket_or_missing_file_is_a_miss(tmp_path: Path) -> None:
    image, npz, _ = cached_image(tmp_path)
    assert load_latents_npz(npz, (64, 64)) is None
    assert load_latents_npz(tmp_path / "none_0064x0048_sd.npz", (64, 48)) is None
    npz.write_bytes(b"corrupt")
    assert load_latents_npz(npz, (64, 48), image_path=image) is None


def test_changed_image_invalidates_even_with_same_size(tmp_path: Path) -> None:
    image, npz, latents = cached_image(tmp_path)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: still valid
    assert torch.equal(_load(npz), latents)
    size, mtime = image.stat().st_size, image.stat().st_mtime_ns
    Image.new("RGB", (64, 48), (1, 2, 4)).save(image)  # same dimensions and byte size, other pixels
    assert image.stat().st_size == size
    os.utime(image, ns=(mtime, mtime))  # even with the last-seen mtime, the hash differs
    assert load_latents_npz(npz, (64, 48)) is None


def test_missing_flipped_latents_is_a_miss(tmp_path: Path) -> None:
    image = tmp_path / "dog.png"
    Image.new("RGB", (64, 64)).save(image)
    npz = cache_file_path(image, 64, 64)
    save_latents_npz(npz, torch.zeros(4, 8, 8), (64, 64), (0, 0, 64, 64))
    assert load_latents_npz(npz, (64, 64)) is not None
    assert load_latents_npz(npz, (64, 64), flipped=True) is None


FOLDER_KEYS = {"ss_batch_size_per_device", "ss_total_batch_size", "ss_resolution", "ss_color_aug", "ss_flip_aug",
               "ss_random_crop", "ss_shuffle_caption", "ss_enable_bucket", "ss_bucket_no_upscale",
               "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_keep_tokens", "ss_dataset_dirs",
               "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info", "ss_num_train_images",
               "ss_num_reg_images", "ss_num_batches_per_epoch"}


def test_folder_mode_metadata(tmp_path: Path) -> None:
    train = write_demo_dataset(tmp_path, n_images=4, size=64)
    (tmp_path / "reg" / "1_shape").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "reg" / "1_shape" / "r.png")
    group = config_from_folders(train, tmp_path / "reg", {
        "resolution": "64", "train_batch_size": 2, "caption_extension": ".txt", "enable_bucket": True,
        "min_bucket_reso": 32, "max_bucket_reso": 128, "bucket_reso_steps": 16})
    meta = dataset_metadata(ImageDataset(group), num_processes=2)
    assert set(meta) == FOLDER_KEYS and all(isinstance(v, str) for v in meta.values())
    assert meta["ss_resolution"] == "(64, 64)" and meta["ss_enable_bucket"] == "True"
    assert meta["ss_total_batch_size"] == "4" and meta["ss_min_bucket_reso"] == "32"
    assert meta["ss_num_train_images"] == "40" and meta["ss_num_reg_images"] == "1"
    assert meta["ss_num_batches_per_epoch"] == "40"  # 40 train + 40 balanced reg, batches of 2
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_sks shape": {"n_repeats": 10, "img_count": 4}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_shape": {"n_repeats": 1, "img_count": 1}}
    assert json.loads(meta["ss_tag_frequency"])["10_sks shape"]["sks shape"] == 4
    info = json.loads(meta["ss_bucket_info"])
    assert info["buckets"] == {"0": {"resolution": [64, 64], "count": 80}} and info["mean_img_ar_error"] == 0


def test_user_config_metadata(tmp_path: Path) -> None:
    train = write_demo_dataset(tmp_path, n_images=2, size=32) / "10_sks shape"
    toml = tmp_path / "d.toml"
    toml.write_text(f'''[general]
caption_extension = ".txt"
[[datasets]]
resolution = 32
[[datasets.subsets]]
image_dir = "{train.as_posix()}"
num_repeats = 3
class_tokens = "sks shape"
[[datasets.subsets]]
image_dir = "{train.as_posix()}"
is_reg = true
''')
    meta = dataset_metadata(ImageDataset(load_dataset_config(toml, {})))
    assert set(meta) == {"ss_datasets", "ss_tag_frequency", "ss_dataset_dirs", "ss_num_train_images",
                         "ss_num_reg_images", "ss_num_batches_per_epoch"}
    (dataset,) = json.loads(meta["ss_datasets"])
    assert dataset["is_dreambooth"] and dataset["resolution"] == [32, 32] and dataset["num_train_images"] == 6
    assert dataset["min_bucket_reso"] is None and dataset["bucket_info"] is None
    assert [(s["image_dir"], s["is_reg"], s["num_repeats"], s["img_count"]) for s in dataset["subsets"]] == [
        ("10_sks shape", False, 3, 2), ("10_sks shape", True, 1, 2)]
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_sks shape": {"n_repeats": 3, "img_count": 2}}
    assert json.loads(meta["ss_tag_frequency"]) == {"10_sks shape": {
        "sks shape": 4, "red circle": 2, "red square": 2}}


def test_demo_dataset_is_deterministic(tmp_path: Path) -> None:
    a = write_demo_dataset(tmp_path / "a", n_images=4, size=32, seed=3)
    b = write_demo_dataset(tmp_path / "b", n_images=4, size=32, seed=3)
    files = sorted(p.name for p in (a / "10_sks shape").iterdir())
    assert files == ["000.png", "000.txt", "001.png", "001.txt", "002.png", "002.txt", "003.png", "003.txt"]
    for name in files:
        assert (a / "10_sks shape" / name).read_bytes() == (b / "10_sks shape" / name).read_bytes()
    assert (a / "10_sks shape" / "001.txt").read_text() == "sks shape, red square\n"
    with Image.open(a / "10_sks shape" / "000.png") as image:
        assert image.size == (32, 32)
