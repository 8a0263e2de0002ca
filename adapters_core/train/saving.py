"""Output names (kohya's), the training metadata, and writing/pruning adapter files.

Names, with ``--output_name`` N and extension E:
final ``N.E`` (N defaults to ``last``); every n epochs ``N-000003.E`` (default N ``epoch``);
every n steps ``N-step00000100.E`` (default N ``at``); states ``N-state``,
``N-000003-state``, ``N-step00000100-state``; after Ctrl-C ``N-interrupted.E``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters_core import __version__
from adapters_core.atomic import check_writable
from adapters_core.family import ModelFamily
from adapters_core.formats import file_hashes
from adapters_core.metadata import modelspec_metadata, network_metadata
from adapters_core.network import Network
from adapters_core.train.args import TrainArgs

log = logging.getLogger(__name__)

DEFAULT_LAST_NAME = "last"
DEFAULT_EPOCH_NAME = "epoch"
DEFAULT_STEP_NAME = "at"


@dataclass(frozen=True)
class OutputNames:
    """File and folder names of one run's outputs."""

    output_dir: Path
    output_name: str | None
    extension: str

    def final(self) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_LAST_NAME}.{self.extension}"

    def epoch(self, epoch: int) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_EPOCH_NAME}-{epoch:06d}.{self.extension}"

    def step(self, step: int) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_STEP_NAME}-step{step:08d}.{self.extension}"

    def interrupted(self) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_LAST_NAME}-interrupted.{self.extension}"

    def final_state(self) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_LAST_NAME}-state"

    def epoch_state(self, epoch: int) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_EPOCH_NAME}-{epoch:06d}-state"

    def step_state(self, step: int) -> Path:
        return self.output_dir / f"{self.output_name or DEFAULT_STEP_NAME}-step{step:08d}-state"


def remove_epoch_number(epoch: int, every: int, keep_last: int | None) -> int | None:
    """The epoch checkpoint to delete after saving ``epoch`` with ``--save_last_n_epochs``."""
    if keep_last is None:
        return None
    old = epoch - every * keep_last
    return old if old > 0 else None


def remove_step_number(step: int, every: int, keep_last: int | None) -> int | None:
    """kohya's rule: keep the checkpoints of the last ``keep_last`` steps (multiples of ``every``)."""
    if keep_last is None:
        return None
    old = step - keep_last - 1
    old -= old % every
    return old if old > 0 else None


def planned_outputs(
    args: TrainArgs, names: OutputNames, num_epochs: int, max_steps: int, start_step: int, start_epoch: int
) -> list[Path]:
    """Every file and state folder this run will write (after the resume point)."""
    paths = [names.final()]
    if args.save_every_n_epochs:
        for epoch in range(start_epoch + 1, num_epochs):
            if epoch % args.save_every_n_epochs == 0:
                paths.append(names.epoch(epoch))
                if args.save_state:
                    paths.append(names.epoch_state(epoch))
    if args.save_every_n_steps:
        for step in range(start_step + 1, max_steps + 1):
            if step % args.save_every_n_steps == 0:
                paths.append(names.step(step))
                if args.save_state:
                    paths.append(names.step_state(step))
    if args.save_state or args.save_state_on_train_end:
        paths.append(names.final_state())
    return paths


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse at the start, before any work, if an output already exists."""
    for path in paths:
        check_writable(path, overwrite)


def base_model_metadata(path: str) -> dict[str, str]:
    """``ss_sd_model_name`` and, for a single file, its legacy and SHA-256 hashes."""
    meta: dict[str, str] = {}
    name = path
    if os.path.exists(path):
        if os.path.isfile(path):
            meta["ss_new_sd_model_hash"], meta["ss_sd_model_hash"] = file_hashes(path)
        name = os.path.basename(os.path.normpath(path))
    meta["ss_sd_model_name"] = name
    return meta


def training_metadata(
    args: TrainArgs,
    *,
    session_id: int,
    started_at: float,
    network_module: str,
    network_args: Mapping[str, str],
    optimizer: str,
    num_batches_per_epoch: int,
    num_epochs: int,
    max_train_steps: int,
    lr_warmup_steps: Any,
    lr_scheduler: str,
    family: ModelFamily,
    v_parameterization: bool,
    dataset: Mapping[str, str],
) -> dict[str, str]:
    """kohya's ``ss_*`` keys (kohya-format §10), all strings; dataset keys come from ``dataset``."""
    values: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": args.output_name,
        "ss_learning_rate": args.learning_rate,
        "ss_text_encoder_lr": list(args.text_encoder_lr) if args.text_encoder_lr else None,  # kohya: its list
        "ss_unet_lr": args.unet_lr,
        "ss_num_validation_images": 0,
        "ss_num_batches_per_epoch": num_batches_per_epoch,
        "ss_num_epochs": num_epochs,
        "ss_gradient_checkpointing": args.gradient_checkpointing,
        "ss_gradient_accumulation_steps": args.gradient_accumulation_steps,
        "ss_max_train_steps": max_train_steps,
        "ss_lr_warmup_steps": lr_warmup_steps,
        "ss_lr_scheduler": lr_scheduler,
        "ss_network_dropout": args.network_dropout,
        "ss_mixed_precision": args.mixed_precision,
        "ss_full_fp16": args.full_fp16,
        "ss_full_bf16": args.full_bf16,  # adapt's addition: kohya records full_bf16 nowhere
        "ss_clip_skip": args.clip_skip,
        "ss_max_token_length": args.max_token_length,
        "ss_cache_latents": args.cache_latents,
        "ss_seed": args.seed,
        "ss_lowram": False,
        "ss_noise_offset": args.noise_offset,
        "ss_multires_noise_iterations": args.multires_noise_iterations,
        "ss_multires_noise_discount": args.multires_noise_discount,
        "ss_adaptive_noise_scale": args.adaptive_noise_scale,
        "ss_zero_terminal_snr": args.zero_terminal_snr,
        "ss_training_comment": args.training_comment,
        "ss_sd_scripts_commit_hash": f"adapt-{__version__}",
        "ss_optimizer": optimizer,
        "ss_max_grad_norm": args.max_grad_norm,
        "ss_caption_dropout_rate": args.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": args.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": args.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": args.face_crop_aug_range,
        "ss_prior_loss_weight": args.prior_loss_weight,
        "ss_min_snr_gamma": args.min_snr_gamma,
        "ss_scale_weight_norms": None,
        "ss_ip_noise_gamma": args.ip_noise_gamma,
        "ss_debiased_estimation": args.debiased_estimation_loss,
        "ss_noise_offset_random_strength": args.noise_offset_random_strength,
        "ss_ip_noise_gamma_random_strength": args.ip_noise_gamma_random_strength,
        "ss_loss_type": args.loss_type,
        "ss_huber_schedule": args.huber_schedule,
        "ss_huber_scale": args.huber_scale,
        "ss_huber_c": args.huber_c,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_validation_seed": None,
        "ss_validation_split": 0.0,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": None,
    }
    meta = {key: str(value) for key, value in values.items()}
    meta.update(
        network_metadata(
            network_module=network_module,
            dim=args.network_dim,
            alpha=args.network_alpha,
            network_args=network_args or None,
            family=family,
            v_parameterization=v_parameterization,
        )
    )
    meta.update(dataset)
    meta.update(base_model_metadata(str(args.pretrained_model_name_or_path)))
    return meta


MINIMUM_KEYS = (
    "ss_v2",
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
)


def modelspec_for(
    args: TrainArgs, *, family: ModelFamily, v_parameterization: bool, started_at: float
) -> dict[str, str]:
    """``modelspec.*`` keys for the trained adapter (title, resolution, author ... from the flags)."""
    resolution = None
    if args.resolution:
        parts = [p.strip() for p in args.resolution.split(",")]
        resolution = f"{parts[0]}x{parts[-1]}"
    meta = modelspec_metadata(
        family=family,
        v_parameterization=v_parameterization,
        title=args.metadata_title or args.output_name,
        resolution=resolution,
        timestamp=started_at,
        clip_skip=args.clip_skip,
        description=args.metadata_description,
    )
    for key in ("author", "license", "tags"):
        value = getattr(args, f"metadata_{key}")
        if value:
            meta[f"modelspec.{key}"] = value
    return meta


@dataclass
class AdapterWriter:
    """Writes the network with the run's metadata, stamped with steps, epoch and finish time."""

    metadata: dict[str, str]
    modelspec: dict[str, str]
    no_metadata: bool
    dtype: torch.dtype | None
    overwrite: bool

    def write(self, network: Network, path: Path, *, step: int, epoch: int) -> Path:
        self.metadata["ss_training_finished_at"] = str(time.time())
        self.metadata["ss_steps"] = str(step)
        self.metadata["ss_epoch"] = str(epoch)
        if self.no_metadata:
            chosen = {key: self.metadata[key] for key in MINIMUM_KEYS if key in self.metadata}
        else:
            chosen = dict(self.metadata)
        chosen.update(self.modelspec)
        network.save(path, dtype=self.dtype, metadata=chosen, overwrite=self.overwrite)
        log.info("saved %s", path)
        return path


def remove_output(path: Path) -> None:
    """Delete an old checkpoint file or state folder (``--save_last_n_*``)."""
    if path.is_dir():
        log.info("removing old state %s", path)
        shutil.rmtree(path)
    elif path.exists():
        log.info("removing old checkpoint %s", path)
        path.unlink()


def network_args_metadata(raw: Mapping[str, str], options: Mapping[str, Any]) -> dict[str, str]:
    """``ss_network_args``: the given key=value pairs, plus conv_dim/conv_alpha when the type
    enabled 3x3 convs by itself (c3lier), so readers that look for conv_dim find it. Empty (and
    then not written, as kohya) when neither applies."""
    result = dict(raw)
    if options.get("conv_dim") and "conv_dim" not in result and not options.get("conv_block_dims"):
        result["conv_dim"] = str(options["conv_dim"])
        if options.get("conv_alpha") is not None:
            result["conv_alpha"] = str(options["conv_alpha"])
    return result
