"""Dataset config: toml parsing, inheritance, error messages, folder mode."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

import pytest

from adapters_core.errors import ConfigError, DatasetError
from adapters_core.train.dataset import (
    DatasetConfig,
    SubsetConfig,
    config_from_folders,
    load_dataset_config,
    parse_folder_name,
)
from adapters_core.train.dataset.config import KEY_KINDS


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_field_has_a_kind() -> None:
    names = {f.name for f in fields(SubsetConfig)} | {f.name for f in fields(DatasetConfig)} - {"subsets"}
    assert set(KEY_KINDS) == names


def test_values_resolve_subset_dataset_general_cli_default(tmp_path: Path) -> None:
    path = write_toml(tmp_path, """
[general]
shuffle_caption = true
keep_tokens = 2
resolution = 64
caption_extension = ".txt"

[[datasets]]
batch_size = 2
keep_tokens = 1

  [[datasets.subsets]]
  image_dir = "a"
  keep_tokens = 3
  num_repeats = 10
  class_tokens = "sks dog"

  [[datasets.subsets]]
  image_dir = "b"
  is_reg = true

[[datasets]]
resolution = [96, 64]
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 16
face_crop_aug_range = [2, 4.0]

  [[datasets.subsets]]
  image_dir = "c"
""")
    group = load_dataset_config(path, {"flip_aug": True, "keep_tokens": 9, "resolution": "128",
                                       "train_batch_size": 5, "color_aug": None, "unrelated_arg": 1})
    first, second = group.datasets
    a, b = first.subsets
    assert (a.keep_tokens, b.keep_tokens, second.subsets[0].keep_tokens) == (3, 1, 2)
    assert a.shuffle_caption and b.shuffle_caption and a.flip_aug
    assert not a.color_aug
    assert a.caption_extension == ".txt" and a.num_repeats == 10 and a.class_tokens == "sks dog"
    assert b.is_reg and not a.is_reg and b.num_repeats == 1
    assert first.resolution == (64, 64) and first.batch_size == 2
    assert second.resolution == (96, 64) and second.batch_size == 5 and second.enable_bucket
    assert second.subsets[0].face_crop_aug_range == (2.0, 4.0)
    assert first.is_dreambooth and group.user_config and group.source == path


def test_cli_resolution_string_and_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\n')
    ds = load_dataset_config(path, {"resolution": "64,32"}).datasets[0]
    assert ds.resolution == (64, 32)
    assert ds.subsets[0].caption_extension == ".caption"
    assert ds.subsets[0].caption_separator == ","


def test_unknown_key_names_file_section_and_suggestion(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\n'
                                'image_dir = "a"\nnum_repeat = 3\n')
    with pytest.raises(DatasetError) as info:
        load_dataset_config(path, {})
    message = str(info.value)
    assert str(path) in message and "[[datasets.subsets]]" in message
    assert "'num_repeat'" in message and "did you mean 'num_repeats'" in message
    assert "\n" not in message


def test_dataset_key_in_subset_is_explained(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = 64\n[[datasets.subsets]]\n'
                                'image_dir = "a"\nbatch_size = 2\n')
    with pytest.raises(DatasetError, match="'batch_size'.*dataset key"):
        load_dataset_config(path, {})


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[genral]\nresolution = 64\n')
    with pytest.raises(DatasetError, match="did you mean 'general'"):
        load_dataset_config(path, {})


@pytest.mark.parametrize("line, expected", [
    ('num_repeats = "ten"', "'num_repeats' must be an integer"),
    ("keep_tokens = true", "'keep_tokens' must be an integer"),
    ("flip_aug = 1", "'flip_aug' must be true or false"),
    ("face_crop_aug_range = [4.0, 2.0]", "'face_crop_aug_range' must be"),
])
def test_wrong_types(tmp_path: Path, line: str, expected: str) -> None:
    path = write_toml(tmp_path, f'[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "a"\n{line}\n')
    with pytest.raises(ConfigError, match=expected):
        load_dataset_config(path, {})


def test_bad_resolution_and_missing_resolution(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = [64]\n[[datasets.subsets]]\nimage_dir = "a"\n')
    with pytest.raises(ConfigError, match=r"'resolution' must be an integer or \[width, height\]"):
        load_dataset_config(path, {})
    path = write_toml(tmp_path, '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "a"\n')
    with pytest.raises(ConfigError, match="'resolution' is required"):
        load_dataset_config(path, {})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_dataset_config(write_toml(tmp_path, "[[datasets]\n"), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_dataset_config(tmp_path / "missing.toml", {})


def test_dreambooth_and_finetuning_subsets_may_not_share_a_dataset(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "a"\n'
                                '[[datasets.subsets]]\nmetadata_file = "meta.json"\n')
    with pytest.raises(DatasetError, match="may not share a dataset"):
        load_dataset_config(path, {})


def test_finetuning_subset_rejects_dreambooth_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = 64\n[[datasets.subsets]]\n'
                                'metadata_file = "meta.json"\nis_reg = true\n')
    with pytest.raises(DatasetError, match="'is_reg' is a DreamBooth key"):
        load_dataset_config(path, {})


def test_subset_needs_image_dir(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nnum_repeats = 2\n')
    with pytest.raises(DatasetError, match="'image_dir' is required"):
        load_dataset_config(path, {})


def test_bucket_settings_are_checked(tmp_path: Path) -> None:
    base = '[[datasets]]\nresolution = 64\nenable_bucket = true\n{}\n[[datasets.subsets]]\nimage_dir = "a"\n'
    with pytest.raises(ConfigError, match="'bucket_reso_steps' must be a positive multiple of 8"):
        load_dataset_config(write_toml(tmp_path, base.format("bucket_reso_steps = 12")), {})
    with pytest.raises(ConfigError, match="'min_bucket_reso'"):
        load_dataset_config(write_toml(tmp_path, base.format("bucket_reso_steps = 16")), {})  # min 256 > 64
    ds = load_dataset_config(write_toml(tmp_path, base.format(
        "bucket_reso_steps = 16\nmin_bucket_reso = 40\nmax_bucket_reso = 100")), {}).datasets[0]
    assert (ds.min_bucket_reso, ds.max_bucket_reso) == (32, 112)


def test_cache_latents_conflicts_name_both_flags(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = 64\n[[datasets.subsets]]\n'
                                'image_dir = "a"\ncolor_aug = true\n')
    with pytest.raises(ConfigError, match="color_aug or random_crop"):
        load_dataset_config(path, {"cache_latents": True})


def test_validation_split_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[datasets]]\nresolution = 64\nvalidation_split = 0.1\n'
                                '[[datasets.subsets]]\nimage_dir = "a"\n')
    with pytest.raises(ConfigError, match="validation_split"):
        load_dataset_config(path, {})


@pytest.mark.parametrize("name, expected", [
    ("10_sks dog", (10, "sks dog")),
    ("5_a_b", (5, "a_b")),
    ("3", (3, "")),
    ("sks dog", None),
    ("x10_dog", None),
])
def test_parse_folder_name(name: str, expected: object) -> None:
    assert parse_folder_name(name) == expected


def test_config_from_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, reg = tmp_path / "train", tmp_path / "reg"
    (train / "10_sks dog").mkdir(parents=True)
    (train / "notes").mkdir()
    (reg / "1_dog").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        group = config_from_folders(train, reg, {"resolution": "64", "train_batch_size": 2,
                                                 "caption_extension": ".txt", "shuffle_caption": True})
    assert "notes" in caplog.text
    assert not group.user_config
    (ds,) = group.datasets
    assert ds.batch_size == 2 and ds.resolution == (64, 64)
    db, prior = ds.subsets
    assert (db.num_repeats, db.class_tokens, db.is_reg, db.caption_extension) == (10, "sks dog", False, ".txt")
    assert (prior.num_repeats, prior.class_tokens, prior.is_reg) == (1, "dog", True)
    assert db.shuffle_caption and prior.shuffle_caption


def test_config_from_folders_without_valid_subfolder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError) as info:
        config_from_folders(tmp_path, None, {"resolution": "64"})
    assert str(tmp_path) in str(info.value) and "<repeats>_<class tokens>" in str(info.value)
    with pytest.raises(DatasetError, match="not a folder"):
        config_from_folders(tmp_path / "nope", None, {"resolution": "64"})
    with pytest.raises(ConfigError, match="--train_data_dir"):
        config_from_folders(None, None, {"resolution": "64"})


def test_config_from_folders_fine_tuning(tmp_path: Path) -> None:
    group = config_from_folders(tmp_path, None, {"resolution": "64", "in_json": str(tmp_path / "meta.json")})
    (subset,) = group.datasets[0].subsets
    assert subset.is_finetuning and subset.image_dir == str(tmp_path)
    assert not group.datasets[0].is_dreambooth
