"""The training dataset: scans and validates every image up front, then yields whole batches.

Everything that can be wrong with the data (missing folder, unreadable image, image too small,
no training images) raises :class:`DatasetError` in the constructor, before any model is loaded.
Each item of the dataset is one batch drawn from one bucket, as in kohya; use it with
``DataLoader(dataset, batch_size=None)``. Batch ``i`` of an epoch is a pure function of
(seed, epoch, i), so results do not depend on worker processes or on resuming.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image

from adapters_core.errors import DatasetError
from adapters_core.train.dataset import images as im
from adapters_core.train.dataset.buckets import LATENT_FACTOR, BucketSelector, bucket_info
from adapters_core.train.dataset.captions import count_tags, load_finetune_metadata, process_caption, read_caption_file
from adapters_core.train.dataset.config import (
    DatasetConfig,
    DatasetGroupConfig,
    SubsetConfig,
    check_latents_cacheable,
)

log = logging.getLogger(__name__)

Reso = tuple[int, int]
#: (image path, bucket (W, H), flipped) → latents [C, H/8, W/8]; the training code owns caching.
LatentsProvider = Callable[[Path, Reso, bool], torch.Tensor]


@dataclass
class ImageRecord:
    """One image as it will be trained: caption before processing, bucket and effective repeats."""

    path: Path
    caption: str
    is_reg: bool
    dataset_index: int
    subset: SubsetConfig
    num_repeats: int
    original_size: Reso
    bucket_reso: Reso = (0, 0)
    resized_size: Reso = (0, 0)
    face: Optional[tuple[int, int, int, int]] = None


@dataclass
class DatasetInfo:
    """What the metadata needs about one dataset (kohya's counters, tag frequency, buckets)."""

    config: DatasetConfig
    subsets: list[SubsetConfig]
    img_counts: list[int]
    num_train_images: int
    num_reg_images: int
    tag_frequency: dict[str, dict[str, int]]
    bucket_info: Optional[dict]


def balance_reg_repeats(reg_repeats: Sequence[int], num_train_images: int) -> list[int]:
    """kohya's prior balancing: the effective repeats of each reg image, 0 when it is not used.

    Reg images are taken in order with their own repeats until their total reaches the number
    of training images (with repeats); if more are needed, each gets one more repeat, round-robin.
    """
    result = [0] * len(reg_repeats)
    total, first_pass = 0, True
    while reg_repeats and total < num_train_images:
        for i, repeats in enumerate(reg_repeats):
            step = repeats if first_pass else 1
            result[i] += step
            total += step
            if total >= num_train_images:
                break
        first_pass = False
    return result


def _scan_subset(subset: SubsetConfig) -> tuple[str, list[tuple[Path, str]], list[str]]:
    """(tag-frequency name, [(image, caption)], texts to count tags in) of one subset."""
    if subset.is_finetuning:
        meta = Path(subset.metadata_file or "")
        entries = load_finetune_metadata(meta, Path(subset.image_dir) if subset.image_dir else None,
                                         subset.caption_separator, subset.enable_wildcard)
        return meta.name, [(e.path, e.caption) for e in entries], [e.tags for e in entries if e.tags]
    folder = Path(subset.image_dir or "")
    if not folder.is_dir():
        raise DatasetError(f"image_dir {folder}: not a folder")
    paths = sorted(p.resolve() for p in folder.iterdir() if im.is_image_file(p))
    if not paths:
        raise DatasetError(f"image_dir {folder}: no images ({' '.join(im.IMAGE_EXTENSIONS)}) in this subset folder")
    captions = []
    for path in paths:
        caption = read_caption_file(path, subset.caption_extension, subset.enable_wildcard)
        captions.append(caption if caption is not None else subset.class_tokens or "")
    return folder.name, list(zip(paths, captions)), captions


class ImageDataset(torch.utils.data.Dataset):
    """Batches of images (or latents) with processed captions, from a :class:`DatasetGroupConfig`.

    Epochs are 1-based as in kohya's loop: call ``set_epoch(epoch)`` before each epoch (it fixes
    the batch order, shuffled with ``seed + epoch``) and ``set_step`` for token warmup.
    """

    def __init__(self, config: DatasetGroupConfig, seed: int = 0, latents_provider: Optional[LatentsProvider] = None,
                 max_train_steps: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.latents_provider = latents_provider
        self.max_train_steps = max_train_steps
        self.step = 0
        self.records: list[ImageRecord] = []
        self.infos: list[DatasetInfo] = []
        self._buckets: list[tuple[int, Reso, list[int]]] = []
        for index, ds in enumerate(config.datasets):
            where = f"dataset {index + 1}" + (f" of {config.source}" if config.source else "")
            if latents_provider is not None:
                check_latents_cacheable(ds, where)
            self._add_dataset(index, ds, where)
        self._by_key = {(r.path, r.bucket_reso): r for r in self.records}  # for pixels()
        self._length = sum(math.ceil(len(items) / config.datasets[d].batch_size) for d, _, items in self._buckets)
        self.set_epoch(1)

    def _add_dataset(self, index: int, ds: DatasetConfig, where: str) -> None:
        """Scan, validate and bucket one dataset; its batches never mix with another's."""
        used: list[SubsetConfig] = []
        counts: list[int] = []
        tags: dict[str, dict[str, int]] = {}
        train: list[ImageRecord] = []
        reg: list[ImageRecord] = []
        for subset in ds.subsets:
            if subset.num_repeats < 1 or subset in used:
                log.warning("%s: ignoring subset %s (num_repeats < 1 or duplicated)", where,
                            subset.image_dir or subset.metadata_file)
                continue
            name, items, tag_texts = _scan_subset(subset)
            count_tags(tag_texts, tags.setdefault(name, {}))
            for path, caption in items:
                face = im.face_from_name(path) if subset.face_crop_aug_range else None
                record = ImageRecord(path, caption, subset.is_reg, index, subset, subset.num_repeats,
                                     im.probe_image(path), face=face)
                (reg if subset.is_reg else train).append(record)
            used.append(subset)
            counts.append(len(items))
        num_train = sum(r.num_repeats for r in train)
        num_reg = sum(r.num_repeats for r in reg)
        if num_train == 0:
            raise DatasetError(f"{where}: no training images (only regularization images or no subsets)")
        if num_reg > num_train:
            log.warning("%s: more regularization images than training images; some are not used", where)
        for record, repeats in zip(reg, balance_reg_repeats([r.num_repeats for r in reg], num_train)):
            record.num_repeats = repeats
        active = [r for r in train + reg if r.num_repeats > 0]
        selector = BucketSelector(ds.resolution, ds.enable_bucket, ds.min_bucket_reso, ds.max_bucket_reso,
                                  ds.bucket_reso_steps, ds.bucket_no_upscale)
        errors: list[float] = []
        sizes: Counter[Reso] = Counter()
        for record in active:
            record.bucket_reso, record.resized_size, error = selector.select(*record.original_size)
            problem = selector.fixed_size_problem(record.original_size, record.subset.random_crop,
                                                  record.face is not None)
            if min(record.bucket_reso) < LATENT_FACTOR:
                problem = f"is {record.original_size[0]}x{record.original_size[1]}, too small for any bucket"
            if problem:
                raise DatasetError(f"{record.path}: image {problem}")
            errors.append(error)
            sizes[record.bucket_reso] += record.num_repeats
        first = len(self.records)
        for reso in sorted(sizes):
            ids = [first + i for i, r in enumerate(active) if r.bucket_reso == reso for _ in range(r.num_repeats)]
            self._buckets.append((index, reso, ids))
        self.records.extend(active)
        self.infos.append(DatasetInfo(ds, used, counts, num_train, num_reg, tags,
                                      bucket_info(dict(sizes), errors) if ds.enable_bucket else None))

    @property
    def num_train_images(self) -> int:
        """Training images with repeats, over all datasets."""
        return sum(i.num_train_images for i in self.infos)

    @property
    def num_reg_images(self) -> int:
        """Regularization images with their own repeats, before balancing (kohya's count)."""
        return sum(i.num_reg_images for i in self.infos)

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's batch order: buckets and batches shuffled with ``seed + epoch``."""
        self.epoch = epoch
        rng = random.Random(self.seed + epoch)
        order = []
        for dataset_index, reso, ids in self._buckets:
            ids = list(ids)
            rng.shuffle(ids)
            size = self.config.datasets[dataset_index].batch_size
            order += [(dataset_index, reso, ids[i:i + size]) for i in range(0, len(ids), size)]
        rng.shuffle(order)
        self._order = order

    def set_step(self, step: int) -> None:
        """The global step, for token warmup."""
        self.step = step

    def set_max_train_steps(self, max_train_steps: int) -> None:
        """Needed when token_warmup_step is a fraction of the run."""
        self.max_train_steps = max_train_steps

    def __len__(self) -> int:
        return self._length

    def _pixels(self, record: ImageRecord, rng: random.Random, flipped: bool, augment: bool
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], tuple[int, int, int, int]]:
        """Image tensor [3,H,W], optional alpha mask [H,W], crop box in the resized (unflipped) image."""
        s = record.subset
        image = im.load_image(record.path, alpha=s.alpha_mask)
        reso = record.bucket_reso
        random_crop = augment and s.random_crop
        if image.size == reso:
            box = (0, 0, reso[0], reso[1])
        elif record.face is not None and s.face_crop_aug_range is not None and not self.config.datasets[
                record.dataset_index].enable_bucket:
            image, box = im.face_crop(image, record.face, reso, s.face_crop_aug_range, random_crop, rng)
        else:
            image, box = im.resize_and_crop(image, record.resized_size, reso, random_crop, rng)
        mask = im.alpha_to_mask(image) if s.alpha_mask else None
        image = image.convert("RGB")
        if augment and s.color_aug:
            image = im.color_aug(image, rng)
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = None if mask is None else mask.flip(-1)
        return im.to_tensor(image), mask, box

    def pixels(self, image_path: Path, bucket_reso: Reso, flipped: bool = False) -> torch.Tensor:
        """Deterministic pixels ([3,H,W] in [-1,1], centre crop, no colour aug) for latent encoding."""
        width, height = bucket_reso
        record = self._by_key[(Path(image_path), (width, height))]
        return self._pixels(record, random.Random(self.seed), flipped, augment=False)[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One batch; see the package docstring for the keys."""
        if not 0 <= index < len(self._order):
            raise IndexError(index)
        dataset_index, reso, ids = self._order[index]
        ds = self.config.datasets[dataset_index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        tensors, masks, boxes, flips, captions = [], [], [], [], []
        records = [self.records[i] for i in ids]
        for record in records:
            s = record.subset
            flipped = s.flip_aug and rng.random() < 0.5
            if self.latents_provider is None:
                data, mask, box = self._pixels(record, rng, flipped, augment=True)
            else:
                data = self._latents(record, reso, flipped)
                mask, box = None, self._centre_box(record)
                if s.alpha_mask:  # the mask is not cached: cut it from the image the same way
                    _, mask, box = self._pixels(record, rng, flipped, augment=False)
            tensors.append(data)
            masks.append(mask if mask is not None else torch.ones(reso[1], reso[0]))
            boxes.append(box)
            flips.append(flipped)
            captions.append(process_caption(record.caption, s, rng, self.epoch, self.step, self.max_train_steps))
        batch: dict[str, Any] = {
            "latents" if self.latents_provider is not None else "images": torch.stack(tensors),
            "captions": captions,
            "is_reg": torch.tensor([r.is_reg for r in records], dtype=torch.bool),
            "image_keys": [str(r.path) for r in records],
            "original_sizes": [r.original_size for r in records],
            "crop_ltrb": boxes,
            "flipped": flips,
            "bucket_reso": reso,
            "network_multipliers": torch.full((len(records),), float(ds.network_multiplier)),
            "custom_attributes": [r.subset.custom_attributes or {} for r in records],
        }
        if any(r.subset.alpha_mask for r in records):
            batch["alpha_masks"] = torch.stack(masks)
        return batch

    def _latents(self, record: ImageRecord, reso: Reso, flipped: bool) -> torch.Tensor:
        latents = self.latents_provider(record.path, reso, flipped)  # type: ignore[misc]
        if tuple(latents.shape[-2:]) != (reso[1] // LATENT_FACTOR, reso[0] // LATENT_FACTOR):
            raise ValueError(f"latents_provider returned {tuple(latents.shape)} for bucket {reso} of {record.path}")
        return latents

    @staticmethod
    def _centre_box(record: ImageRecord) -> tuple[int, int, int, int]:
        """The crop box that cached latents were made with (no random crop is allowed with them)."""
        (rw, rh), (bw, bh) = record.resized_size, record.bucket_reso
        left, top = (rw - bw) // 2, (rh - bh) // 2
        return left, top, left + bw, top + bh


__all__ = ["ImageDataset", "ImageRecord", "DatasetInfo", "LatentsProvider", "balance_reg_repeats"]
