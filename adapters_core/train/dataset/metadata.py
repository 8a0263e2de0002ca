"""kohya's dataset metadata (``ss_*`` keys) for the saved adapter.

kohya writes one layout with ``--dataset_config`` (``ss_datasets`` as JSON) and an older flat
layout in folder mode; readers such as the WebUI additional-networks extension expect exactly
these keys. Every value is a string: ``str()`` for scalars and tuples, ``json.dumps`` for dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters_core.train.dataset.config import SubsetConfig
from adapters_core.train.dataset.dataset import DatasetInfo, ImageDataset


def _dir_name(subset: SubsetConfig) -> str:
    """The name kohya shows for a subset: the folder, or the metadata file for fine-tuning."""
    return Path(subset.metadata_file or subset.image_dir or "").name


def _dataset_entry(info: DatasetInfo) -> dict[str, Any]:
    ds = info.config
    bucket = ds.enable_bucket
    entry: dict[str, Any] = {
        "is_dreambooth": ds.is_dreambooth,
        "batch_size_per_device": ds.batch_size,
        "num_train_images": info.num_train_images,
        "num_reg_images": info.num_reg_images,
        "resolution": list(ds.resolution),
        "enable_bucket": bucket,
        "min_bucket_reso": ds.min_bucket_reso if bucket else None,
        "max_bucket_reso": ds.max_bucket_reso if bucket else None,
        "tag_frequency": info.tag_frequency,
        "bucket_info": info.bucket_info,
    }
    subsets = []
    for subset, count in zip(info.subsets, info.img_counts):
        item: dict[str, Any] = {
            "img_count": count,
            "num_repeats": subset.num_repeats,
            "color_aug": subset.color_aug,
            "flip_aug": subset.flip_aug,
            "random_crop": subset.random_crop,
            "shuffle_caption": subset.shuffle_caption,
            "keep_tokens": subset.keep_tokens,
            "keep_tokens_separator": subset.keep_tokens_separator,
            "secondary_separator": subset.secondary_separator,
            "enable_wildcard": subset.enable_wildcard,
            "caption_prefix": subset.caption_prefix,
            "caption_suffix": subset.caption_suffix,
        }
        if subset.image_dir:
            item["image_dir"] = Path(subset.image_dir).name
        if ds.is_dreambooth:
            item["class_tokens"] = subset.class_tokens
            item["is_reg"] = subset.is_reg
        else:
            item["metadata_file"] = Path(subset.metadata_file or "").name
        subsets.append(item)
    entry["subsets"] = subsets
    return entry


def _user_config_metadata(infos: list[DatasetInfo]) -> dict[str, str]:
    """``ss_datasets``, plus tag frequency and folders merged over datasets (reg folders left out)."""
    tag_frequency: dict[str, dict[str, int]] = {}
    dirs: dict[str, dict[str, int]] = {}
    for info in infos:
        for subset, count in zip(info.subsets, info.img_counts):
            if subset.is_reg:
                continue
            name, n = _dir_name(subset), 2
            while name in dirs:  # the same folder in several datasets: "img (2)", as kohya
                name, n = f"{_dir_name(subset)} ({n})", n + 1
            dirs[name] = {"n_repeats": subset.num_repeats, "img_count": count}
        for name, freq in info.tag_frequency.items():
            tag_frequency.setdefault(name, freq)
    return {
        "ss_datasets": json.dumps([_dataset_entry(info) for info in infos]),
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_dataset_dirs": json.dumps(dirs),
    }


def _folder_metadata(info: DatasetInfo, total_batch_size: int) -> dict[str, str]:
    """The flat folder-mode layout; the flags are the command-line values shared by all subsets."""
    ds, first = info.config, info.subsets[0]
    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    for subset, count in zip(info.subsets, info.img_counts):
        (reg_dirs if subset.is_reg else dirs)[_dir_name(subset)] = {"n_repeats": subset.num_repeats, "img_count": count}
    bucket = ds.enable_bucket
    values: dict[str, Any] = {
        "ss_batch_size_per_device": ds.batch_size,
        "ss_total_batch_size": total_batch_size,
        "ss_resolution": tuple(ds.resolution),
        "ss_color_aug": first.color_aug,
        "ss_flip_aug": first.flip_aug,
        "ss_random_crop": first.random_crop,
        "ss_shuffle_caption": first.shuffle_caption,
        "ss_enable_bucket": bucket,
        "ss_bucket_no_upscale": bucket and ds.bucket_no_upscale,
        "ss_min_bucket_reso": ds.min_bucket_reso if bucket else None,
        "ss_max_bucket_reso": ds.max_bucket_reso if bucket else None,
        "ss_keep_tokens": first.keep_tokens,
    }
    result = {k: str(v) for k, v in values.items()}
    result.update({
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        "ss_tag_frequency": json.dumps(info.tag_frequency),
        "ss_bucket_info": json.dumps(info.bucket_info),
    })
    return result


def dataset_metadata(dataset: ImageDataset, num_processes: int = 1, gradient_accumulation_steps: int = 1
                     ) -> dict[str, str]:
    """All dataset ``ss_*`` keys for ``dataset``, in the layout its config calls for."""
    result = {
        "ss_num_train_images": str(dataset.num_train_images),
        "ss_num_reg_images": str(dataset.num_reg_images),
        "ss_num_batches_per_epoch": str(len(dataset)),
    }
    if dataset.config.user_config:
        result.update(_user_config_metadata(dataset.infos))
    else:
        info = dataset.infos[0]
        total = info.config.batch_size * num_processes * gradient_accumulation_steps
        result.update(_folder_metadata(info, total))
    return result


__all__ = ["dataset_metadata"]
