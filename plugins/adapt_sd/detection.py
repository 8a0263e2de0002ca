"""Telling SD 1.x, SD 2.x and the tiny model apart: from a single file's tensor shapes, from a
Diffusers folder's U-Net config, from a loaded U-Net's config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adapters_core.errors import ModelLoadError
from adapters_core.models.ldm_layout import TE_V1_PREFIX, TE_V2_PREFIX, UNET_PREFIX
from adapters_core.textfiles import read_json

CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_CONTEXT = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_SDXL_EMBEDDING = UNET_PREFIX + "label_emb.0.0.weight"
_SD_CHANNELS = 320
_TINY_CHANNELS = 32
_SD2_CONTEXT = 1024


def detect_architecture(checkpoint: Mapping[str, torch.Tensor], path: Path) -> str:
    """Which SD model an LDM checkpoint holds: ``sd_v1``, ``sd_v2`` or ``tiny``.

    SD2 is recognised by its OpenCLIP text encoder (``cond_stage_model.model.``), checked
    against the U-Net's cross-attention context size (1024 for SD2, 768 for SD1).
    """
    if CONV_IN not in checkpoint:
        hint = " (this is an SDXL checkpoint: the sdxl model family reads it)" if looks_like_sdxl(checkpoint) else ""
        raise ModelLoadError(
            f"{path}: no {CONV_IN} key; expected an SD 1.x/2.x checkpoint in the original (LDM) layout{hint}"
        )
    channels = checkpoint[CONV_IN].shape[0]
    if channels not in (_SD_CHANNELS, _TINY_CHANNELS):
        raise ModelLoadError(
            f"{path}: {CONV_IN} has {channels} output channels; expected {_SD_CHANNELS} (SD 1.x/2.x)"
        )
    if any(k.startswith(TE_V2_PREFIX) for k in checkpoint):
        is_v2 = True
    elif any(k.startswith(TE_V1_PREFIX) for k in checkpoint):
        is_v2 = False
    else:
        raise ModelLoadError(f"{path}: no text encoder ({TE_V1_PREFIX}* or {TE_V2_PREFIX}* keys)")
    if channels == _TINY_CHANNELS:
        if is_v2:
            raise ModelLoadError(
                f"{path}: a tiny U-Net with an OpenCLIP text encoder; expected the tiny SD1-style model"
            )
        return "tiny"
    if _CONTEXT in checkpoint:
        context = checkpoint[_CONTEXT].shape[1]
        if context != (_SD2_CONTEXT if is_v2 else 768):
            raise ModelLoadError(
                f"{path}: {_CONTEXT} has context size {context}, which does not fit its "
                f"{'OpenCLIP (SD 2.x)' if is_v2 else 'CLIP (SD 1.x)'} text encoder"
            )
    return "sd_v2" if is_v2 else "sd_v1"


def looks_like_sdxl(checkpoint: Mapping[str, object]) -> bool:
    """Whether a single file has SDXL's parts (``conditioner.*`` text encoders or the U-Net's
    size embedding ``label_emb``): not an SD 1.x/2.x file, whatever else it lacks."""
    return _SDXL_EMBEDDING in checkpoint or any(k.startswith("conditioner.") for k in checkpoint)


def kind_of_unet_config(config: Mapping[str, Any]) -> str:
    """``tiny``, ``sd_v2`` or ``sd_v1`` for a Diffusers U-Net config."""
    channels = list(config.get("block_out_channels") or [_SD_CHANNELS])
    if channels[0] == _TINY_CHANNELS:
        return "tiny"
    return "sd_v2" if config.get("cross_attention_dim") == _SD2_CONTEXT else "sd_v1"


def unet_kind(folder: Path) -> str:
    """The kind of a Diffusers folder's U-Net, from its ``unet/config.json``."""
    config_file = folder / "unet" / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder}: no unet/ folder; expected a Stable Diffusion Diffusers folder")
    config = read_json(config_file, str(config_file), ModelLoadError)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file}: expected a JSON object (a U-Net config)")
    return kind_of_unet_config(config)
