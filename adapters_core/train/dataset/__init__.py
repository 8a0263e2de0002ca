"""The data layer of training: kohya-compatible dataset config, captions, buckets and batches.

Build a :class:`DatasetGroupConfig` with :func:`load_dataset_config` (``--dataset_config``) or
:func:`config_from_folders` (``--train_data_dir``/``--reg_data_dir``), then an
:class:`ImageDataset`; every data problem is reported there, before a model is loaded.

Each ``dataset[i]`` is a whole batch from one bucket (use ``DataLoader(ds, batch_size=None)``):

- ``images``: float [B, 3, H, W] in [-1, 1]; or ``latents`` [B, C, H/8, W/8] with a latents_provider
- ``captions``: list[str], processed for this epoch/step
- ``is_reg``: bool [B] (the trainer weights these by ``--prior_loss_weight``)
- ``image_keys``: list[str] absolute image paths
- ``original_sizes``: list[(width, height)] before resizing
- ``crop_ltrb``: list[(left, top, right, bottom)] crop box in the resized, unflipped image
- ``flipped``: list[bool]; ``bucket_reso``: (W, H)
- ``network_multipliers``: float [B]; ``custom_attributes``: list[dict]
- ``alpha_masks``: float [B, H, W] in [0, 1], only when a subset sets ``alpha_mask``
"""

from adapters_core.train.dataset.buckets import LATENT_FACTOR, BucketSelector, bucket_info, make_bucket_resolutions
from adapters_core.train.dataset.captions import (
    count_tags,
    load_finetune_metadata,
    process_caption,
    read_caption_file,
)
from adapters_core.train.dataset.config import (
    DatasetConfig,
    DatasetGroupConfig,
    SubsetConfig,
    check_latents_cacheable,
    config_from_folders,
    load_dataset_config,
    parse_folder_name,
)
from adapters_core.train.dataset.dataset import (
    DatasetInfo,
    ImageDataset,
    ImageRecord,
    LatentsProvider,
    balance_reg_repeats,
)
from adapters_core.train.dataset.demo import write_demo_dataset
from adapters_core.train.dataset.images import IMAGE_EXTENSIONS
from adapters_core.train.dataset.latents import cache_file_path, load_latents_npz, save_latents_npz
from adapters_core.train.dataset.metadata import dataset_metadata

__all__ = [
    "LATENT_FACTOR", "BucketSelector", "bucket_info", "make_bucket_resolutions",
    "count_tags", "load_finetune_metadata", "process_caption", "read_caption_file",
    "DatasetConfig", "DatasetGroupConfig", "SubsetConfig", "check_latents_cacheable", "config_from_folders",
    "load_dataset_config", "parse_folder_name",
    "DatasetInfo", "ImageDataset", "ImageRecord", "LatentsProvider", "balance_reg_repeats",
    "write_demo_dataset", "IMAGE_EXTENSIONS",
    "cache_file_path", "load_latents_npz", "save_latents_npz",
    "dataset_metadata",
]
