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

from typing import TYPE_CHECKING

from adapters_core.lazy_exports import lazy_exports

# What the package offers, by the module that defines it. The modules are imported when a name is
# first used, so that a light submodule (image preprocessing for `adapt resize-images`) can be
# imported without torch.
_EXPORTS = {
    "LATENT_FACTOR": "buckets",
    "BucketSelector": "buckets",
    "bucket_info": "buckets",
    "make_bucket_resolutions": "buckets",
    "count_tags": "captions",
    "load_finetune_metadata": "captions",
    "process_caption": "captions",
    "read_caption_file": "captions",
    "DatasetConfig": "config",
    "DatasetGroupConfig": "config",
    "SubsetConfig": "config",
    "check_latents_cacheable": "config",
    "config_from_folders": "config",
    "load_dataset_config": "config",
    "parse_folder_name": "config",
    "DatasetInfo": "dataset",
    "ImageDataset": "dataset",
    "ImageRecord": "dataset",
    "LatentsProvider": "dataset",
    "balance_reg_repeats": "dataset",
    "write_demo_dataset": "demo",
    "IMAGE_EXTENSIONS": "images",
    "cache_file_path": "latents",
    "load_latents_npz": "latents",
    "save_latents_npz": "latents",
    "dataset_metadata": "metadata",
}

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from adapters_core.train.dataset.buckets import LATENT_FACTOR, BucketSelector, bucket_info, make_bucket_resolutions  # noqa: F401
    from adapters_core.train.dataset.captions import (  # noqa: F401
        count_tags,
        load_finetune_metadata,
        process_caption,
        read_caption_file,
    )
    from adapters_core.train.dataset.config import (  # noqa: F401
        DatasetConfig,
        DatasetGroupConfig,
        SubsetConfig,
        check_latents_cacheable,
        config_from_folders,
        load_dataset_config,
        parse_folder_name,
    )
    from adapters_core.train.dataset.dataset import (  # noqa: F401
        DatasetInfo,
        ImageDataset,
        ImageRecord,
        LatentsProvider,
        balance_reg_repeats,
    )
    from adapters_core.train.dataset.demo import write_demo_dataset  # noqa: F401
    from adapters_core.train.dataset.images import IMAGE_EXTENSIONS  # noqa: F401
    from adapters_core.train.dataset.latents import cache_file_path, load_latents_npz, save_latents_npz  # noqa: F401
    from adapters_core.train.dataset.metadata import dataset_metadata  # noqa: F401


__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
