"""ImageDataset: validation at construction, reg balancing, batching, augmentation, latents mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from adapters_core.errors import ConfigError, DatasetError
from adapters_core.train.dataset import (
    ImageDataset,
    balance_reg_repeats,
    config_from_folders,
    load_dataset_config,
)


def make_images(folder: Path, sizes: list[tuple[int, int]], caption: str | None = None) -> list[Path]:
    """Left half red, right half blue, so a horizontal flip is visible."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        image = Image.new("RGB", (w, h), (0, 0, 255))
        image.paste((255, 0, 0), (0, 0, w // 2, h))
        path = folder / f"{i:02d}.png"
        image.save(path)
        if caption is not None:
            path.with_suffix(".txt").write_text(f"{caption} {i}", encoding="utf-8")
        paths.append(path)
    return paths


def folder_dataset(tmp_path: Path, n_train: int = 2, n_reg: int = 0, **cli: Any) -> ImageDataset:
    make_images(tmp_path / "train" / "5_sks dog", [(64, 64)] * n_train, caption="sks dog, photo")
    reg = None
    if n_reg:
        make_images(tmp_path / "reg" / "1_dog", [(64, 64)] * n_reg)
        reg = tmp_path / "reg"
    args = {"resolution": "64", "caption_extension": ".txt", **cli}
    return ImageDataset(config_from_folders(tmp_path / "train", reg, args), seed=7)


@pytest.mark.parametrize("reg, n_train, expected", [
    ([1] * 30, 100, [4] * 10 + [3] * 20),
    ([1] * 5, 3, [1, 1, 1, 0, 0]),
    ([2, 3], 4, [2, 3]),
    ([1, 1], 5, [3, 2]),
    ([], 10, []),
])
def test_balance_reg_repeats(reg: list[int], n_train: int, expected: list[int]) -> None:
    assert balance_reg_repeats(reg, n_train) == expected


def test_reg_images_are_balanced_in_the_dataset(tmp_path: Path) -> None:
    ds = folder_dataset(tmp_path, n_train=2, n_reg=3, train_batch_size=4)
    assert ds.num_train_images == 10 and ds.num_reg_images == 3  # kohya counts reg before balancing
    reg = [r for r in ds.records if r.is_reg]
    assert [r.num_repeats for r in reg] == [4, 3, 3]
    assert len(ds) == 5  # 20 items in one 64x64 bucket, batches of 4
    batches = [ds[i] for i in range(len(ds))]
    assert sum(int(b["is_reg"].sum()) for b in batches) == 10
    reg_captions = {c for b in batches for c, r in zip(b["captions"], b["is_reg"]) if r}
    assert reg_captions == {"dog"}  # no caption file → class tokens


def test_batch_format(tmp_path: Path) -> None:
    ds = folder_dataset(tmp_path, train_batch_size=3)
    batch = ds[0]
    assert batch["images"].shape == (3, 3, 64, 64) and batch["images"].dtype == torch.float32
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert len(batch["captions"]) == 3 and batch["captions"][0].startswith("sks dog, photo")
    assert batch["is_reg"].dtype == torch.bool and not batch["is_reg"].any()
    assert all(Path(k).is_absolute() for k in batch["image_keys"])
    assert batch["original_sizes"] == [(64, 64)] * 3 and batch["crop_ltrb"] == [(0, 0, 64, 64)] * 3
    assert batch["network_multipliers"].tolist() == [1.0] * 3 and batch["bucket_reso"] == (64, 64)
    assert "alpha_masks" not in batch and "latents" not in batch
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_epoch_order_is_seeded_and_reproducible(tmp_path: Path) -> None:
    ds = folder_dataset(tmp_path, n_train=4, train_batch_size=2)
    def order() -> list[list[str]]:
        return [ds[i]["image_keys"] for i in range(len(ds))]
    first = order()
    assert order() == first
    ds.set_epoch(2)
    second = order()
    ds.set_epoch(1)
    assert order() == first and second != first
    assert sorted(k for b in second for k in b) == sorted(k for b in first for k in b)


def test_buckets_keep_batches_uniform(tmp_path: Path) -> None:
    make_images(tmp_path / "a", [(64, 64), (64, 64), (96, 48), (96, 48), (96, 48)])
    toml = tmp_path / "d.toml"
    toml.write_text(f'''[general]
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 16
[[datasets]]
resolution = 64
batch_size = 2
[[datasets.subsets]]
image_dir = "{(tmp_path / 'a').as_posix()}"
''')
    ds = ImageDataset(load_dataset_config(toml, {}))
    assert len(ds) == 1 + 2  # two 64x64 → 1 batch, three 96x48 → 2 batches
    for i in range(len(ds)):
        b = ds[i]
        assert b["images"].shape[2:] == (b["bucket_reso"][1], b["bucket_reso"][0])
    info = ds.infos[0].bucket_info
    assert info is not None
    assert sorted(v["count"] for v in info["buckets"].values()) == [2, 3]


def test_flip_aug_mirrors_the_image(tmp_path: Path) -> None:
    ds = folder_dataset(tmp_path, n_train=1, train_batch_size=1, flip_aug=True)
    seen = set()
    for epoch in range(1, 12):
        ds.set_epoch(epoch)
        b = ds[0]
        left_is_red = bool(b["images"][0, 0, :, 0].mean() > 0)
        assert left_is_red != b["flipped"][0]
        seen.add(b["flipped"][0])
    assert seen == {True, False}


def test_color_aug_and_random_crop_run(tmp_path: Path) -> None:
    make_images(tmp_path / "train" / "1_x", [(80, 64)] * 2)
    group = config_from_folders(tmp_path / "train", None, {"resolution": "64", "random_crop": True, "color_aug": True})
    ds = ImageDataset(group)
    assert ds[0]["images"].shape == (1, 3, 64, 64)


def test_unreadable_image_is_reported_at_construction(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "2_x"
    make_images(folder, [(64, 64)])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError) as info:
        folder_dataset_from(tmp_path)
    assert "broken.png" in str(info.value) and "not a readable image" in str(info.value)


def folder_dataset_from(tmp_path: Path, **cli: Any) -> ImageDataset:
    return ImageDataset(config_from_folders(tmp_path / "train", None, {"resolution": "64", **cli}))


def test_empty_subset_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "3_x").mkdir(parents=True)
    (tmp_path / "train" / "3_x" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"3_x: no images \(.png .jpg"):
        folder_dataset_from(tmp_path)


def test_image_sizes_without_buckets_are_checked(tmp_path: Path) -> None:
    make_images(tmp_path / "train" / "1_x", [(48, 64)])
    with pytest.raises(DatasetError, match="00.png: image is 48x64, smaller than the resolution 64x64"):
        folder_dataset_from(tmp_path)


def test_only_reg_images_is_an_error(tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    make_images(reg, [(64, 64)])
    toml = tmp_path / "d.toml"
    toml.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\n'
                    f'image_dir = "{reg.as_posix()}"\nis_reg = true\n')
    with pytest.raises(DatasetError, match="no training images"):
        ImageDataset(load_dataset_config(toml, {}))


def test_latents_mode(tmp_path: Path) -> None:
    make_images(tmp_path / "train" / "2_x", [(64, 64)] * 3)
    group = config_from_folders(tmp_path / "train", None, {"resolution": "64", "train_batch_size": 2, "flip_aug": True})
    calls: list[tuple[Path, tuple[int, int], bool]] = []

    def provider(path: Path, reso: tuple[int, int], flipped: bool) -> torch.Tensor:
        calls.append((path, reso, flipped))
        return torch.full((4, reso[1] // 8, reso[0] // 8), 1.0 if flipped else 0.0)

    ds = ImageDataset(group, latents_provider=provider)
    batch = ds[0]
    assert "images" not in batch and batch["latents"].shape == (2, 4, 8, 8)
    assert [bool(x[0, 0, 0]) for x in batch["latents"]] == batch["flipped"]
    assert calls[0][1] == (64, 64)
    pixels = ds.pixels(calls[0][0], (64, 64))
    assert pixels.shape == (3, 64, 64) and torch.equal(pixels, ds.pixels(calls[0][0], (64, 64)))
    with pytest.raises(ConfigError, match="color_aug or random_crop"):
        ImageDataset(config_from_folders(tmp_path / "train", None, {"resolution": "64", "color_aug": True}),
                     latents_provider=provider)


def test_alpha_mask(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    image = Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    image.paste((10, 20, 30, 255), (0, 0, 32, 64))
    image.save(folder / "x.png")
    toml = tmp_path / "d.toml"
    toml.write_text(f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "{folder.as_posix()}"\n'
                    'alpha_mask = true\ncustom_attributes = { style = "flat" }\n')
    batch = ImageDataset(load_dataset_config(toml, {}))[0]
    mask = batch["alpha_masks"][0]
    assert mask.shape == (64, 64) and mask[:, :32].min() == 1 and mask[:, 32:].max() == 0
    assert batch["custom_attributes"] == [{"style": "flat"}]


def test_face_crop_without_buckets(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "1_face"
    folder.mkdir(parents=True)
    Image.new("RGB", (128, 96), (50, 50, 50)).save(folder / "p_40_30_20_20.png")
    group = config_from_folders(tmp_path / "train", None, {"resolution": "64", "face_crop_aug_range": "2.0,4.0"})
    ds = ImageDataset(group)
    assert ds.records[0].face == (40, 30, 20, 20)
    batch = ds[0]
    assert batch["images"].shape == (1, 3, 64, 64)
    left, top, right, bottom = batch["crop_ltrb"][0]
    assert (right - left, bottom - top) == (64, 64)


def test_image_too_small_for_any_bucket(tmp_path: Path) -> None:
    make_images(tmp_path / "train" / "1_x", [(64, 64), (40, 4)])
    group = config_from_folders(tmp_path / "train", None, {
        "resolution": "64", "enable_bucket": True, "bucket_no_upscale": True, "min_bucket_reso": 16,
        "max_bucket_reso": 128, "bucket_reso_steps": 16})
    with pytest.raises(DatasetError, match="01.png: image is 40x4, too small for any bucket"):
        ImageDataset(group)


def test_works_with_a_dataloader(tmp_path: Path) -> None:
    ds = folder_dataset(tmp_path, n_train=3, train_batch_size=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(ds) and batches[0]["images"].shape[1:] == (3, 64, 64)
    assert [b["image_keys"] for b in batches] == [ds[i]["image_keys"] for i in range(len(ds))]
