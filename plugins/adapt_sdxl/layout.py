"""SDXL's original single-file layout (Stability's SGM): key prefixes, detection, and the
text encoders' conversion both ways.

A single file holds the U-Net under ``model.diffusion_model.`` and the VAE under
``first_stage_model.`` (the LDM layout SD 1.x uses, read and written by
:mod:`adapters_core.models.ldm_layout`), CLIP ViT-L under ``conditioner.embedders.0.transformer.``
(transformers' names) and OpenCLIP ViT-bigG under ``conditioner.embedders.1.model.`` (open_clip
names: fused ``in_proj`` q/k/v, ``text_projection`` applied as ``x @ P``, ``logit_scale``).
The text encoders reuse SD 1.x's and SD 2.x's conversions under their own prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from adapters_core.errors import ModelLoadError
from adapters_core.models.ldm_layout import (
    TE_V1_PREFIX,
    TE_V2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    StateDict,
    text_encoder_from_ldm,
    text_encoder_to_ldm,
)

TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
ADD_EMBEDDING = UNET_PREFIX + "label_emb.0.0.weight"  # SDXL's pooled-text/size embedding
TEXT_PROJECTION = "text_projection"
LOGIT_SCALE = "logit_scale"
WITH_PROJECTION_PREFIX = "text_model."  # CLIPTextModelWithProjection's keys start with it
_PARTS = {
    "U-Net": UNET_PREFIX,
    "VAE": VAE_PREFIX,
    "CLIP ViT-L text encoder": TE1_PREFIX,
    "OpenCLIP ViT-bigG text encoder": TE2_PREFIX,
}


def is_sgm_checkpoint(keys: Mapping[str, object], path: Path) -> bool:
    """Whether a single file is an SDXL base checkpoint (``conditioner.embedders.*`` text
    encoders and a U-Net with the size embedding). A file with some of SDXL's parts but not
    all is refused, naming the part it lacks."""
    has_conditioner = any(key.startswith("conditioner.embedders.") for key in keys)
    if not has_conditioner and ADD_EMBEDDING not in keys:
        return False
    for part, prefix in _PARTS.items():
        if not any(key.startswith(prefix) for key in keys):
            raise ModelLoadError(
                f"{path}: an SDXL checkpoint without its {part} (no {prefix}* keys); expected the "
                f"SGM layout with {', '.join(p + '*' for p in _PARTS.values())}"
            )
    return True


def _renamed(checkpoint: Mapping[str, torch.Tensor], old: str, new: str) -> StateDict:
    return {new + key[len(old) :]: tensor for key, tensor in checkpoint.items() if key.startswith(old)}


def text_encoder_1_from_sgm(checkpoint: Mapping[str, torch.Tensor]) -> StateDict:
    """CLIP ViT-L keys of a single file -> a CLIPTextModel state dict."""
    return text_encoder_from_ldm(_renamed(checkpoint, TE1_PREFIX, TE_V1_PREFIX), v2=False, num_layers=0)


def text_encoder_2_from_sgm(checkpoint: Mapping[str, torch.Tensor], num_layers: int) -> StateDict:
    """OpenCLIP ViT-bigG keys of a single file -> a CLIPTextModelWithProjection state dict.

    open_clip projects with ``x @ P``; a Linear computes ``x @ W.T``: ``W = P.T``. ``logit_scale``
    has no place in the text model (a template carries it back on save)."""
    if TE2_PREFIX + TEXT_PROJECTION not in checkpoint:
        raise ModelLoadError(f"no {TE2_PREFIX}{TEXT_PROJECTION} key; expected the OpenCLIP ViT-bigG text encoder")
    state = text_encoder_from_ldm(_renamed(checkpoint, TE2_PREFIX, TE_V2_PREFIX), v2=True, num_layers=num_layers)
    out = {WITH_PROJECTION_PREFIX + key: tensor for key, tensor in state.items()}
    out["text_projection.weight"] = checkpoint[TE2_PREFIX + TEXT_PROJECTION].t().contiguous()
    return out


def text_encoder_1_to_sgm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A CLIPTextModel state dict -> its single-file keys (``position_ids`` included)."""
    return _renamed(text_encoder_to_ldm(state_dict, v2=False), TE_V1_PREFIX, TE1_PREFIX)


def text_encoder_2_to_sgm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A CLIPTextModelWithProjection state dict -> its single-file keys (open_clip layout)."""
    projection = state_dict["text_projection.weight"]
    text_model = {
        key[len(WITH_PROJECTION_PREFIX) :]: tensor
        for key, tensor in state_dict.items()
        if key.startswith(WITH_PROJECTION_PREFIX)
    }
    out = _renamed(text_encoder_to_ldm(text_model, v2=True), TE_V2_PREFIX, TE2_PREFIX)
    out[TE2_PREFIX + TEXT_PROJECTION] = projection.t().contiguous()
    return out
