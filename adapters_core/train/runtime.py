"""Process-level setup of a run: the Accelerator, the data loader, the seed."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, Dataset

from adapters_core.errors import ConfigError
from adapters_core.train.args import TrainArgs
from adapters_core.train.dataset import ImageDataset
from adapters_core.train.state import ResumePoint


class EpochSyncDataset(Dataset):
    """Passes the current epoch and step to the dataset, also inside worker processes.

    Worker processes hold a copy of the dataset; shared values carry the epoch (which fixes
    the batch order) and the step (token warm-up) to that copy before each item is built.
    """

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset
        self.epoch = multiprocessing.Value("i", 1)
        self.step = multiprocessing.Value("i", 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.dataset.epoch != self.epoch.value:
            self.dataset.set_epoch(self.epoch.value)
        self.dataset.set_step(self.step.value)
        return self.dataset[index]


def first_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for batch_size=1: the dataset already yields whole batches."""
    return items[0]


def make_accelerator(args: TrainArgs) -> Accelerator:
    """A fresh Accelerator for this run (earlier runs in the same process leave state behind)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        flags = "--mixed_precision fp16" + (" --full_fp16" if args.full_fp16 else "")
        raise ConfigError(f"{flags}: needs a CUDA GPU; on the CPU use bf16 or no")
    logging_dir = None
    if args.logging_dir is not None:
        logging_dir = os.path.join(args.logging_dir, (args.log_prefix or "") + time.strftime("%Y%m%d%H%M%S"))
    log_with: Any = args.log_with or ("tensorboard" if logging_dir else None)
    if log_with == "all":
        log_with = ["tensorboard", "wandb"]
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_dir=logging_dir,
    )
    if args.full_fp16 and accelerator.scaler is not None:
        allow_float16_gradients(accelerator.scaler)
    return accelerator


def allow_float16_gradients(scaler: torch.amp.GradScaler) -> None:
    """Let fp16's gradient scaler unscale float16 gradients (--full_fp16's adapter is float16).

    ``GradScaler.unscale_`` (called before gradient clipping and by ``step``) refuses float16
    gradients, since AMP expects float32 master weights; its unscale kernel handles them, and
    torch offers no public switch: the only one is the ``allow_fp16`` argument of the private
    ``_unscale_grads_`` (which torch's own FSDP scaler passes as True). This wraps that method
    on this one scaler instance; the check for inf/NaN gradients (skipped steps) is unchanged.
    """
    unscale_grads = scaler._unscale_grads_

    def unscale_grads_allowing_float16(
        optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor, found_inf: torch.Tensor, allow_fp16: bool
    ) -> dict[torch.device, torch.Tensor]:
        return unscale_grads(optimizer, inv_scale, found_inf, True)

    setattr(scaler, "_unscale_grads_", unscale_grads_allowing_float16)  # noqa: B010 - an instance attribute


def resolved_seed(args: TrainArgs, resume: ResumePoint | None) -> int:
    """--seed; else the seed of the resumed run; else a random one (recorded in the metadata)."""
    if args.seed is not None:
        return args.seed
    if resume is not None and resume.seed is not None:
        return int(resume.seed)
    return random.randint(0, 2**32 - 1)


def make_loader(sync: EpochSyncDataset, args: TrainArgs) -> DataLoader:
    """kohya's loader: one dataset item (a whole batch) per step, in the dataset's order, with
    at most min(--max_data_loader_n_workers, CPU count) workers."""
    workers = min(args.max_data_loader_n_workers, os.cpu_count() or 1)
    return DataLoader(
        sync,
        batch_size=1,
        shuffle=False,
        collate_fn=first_item,
        num_workers=workers,
        persistent_workers=args.persistent_data_loader_workers and workers > 0,
    )
